"""End to end on the fake engine: real API and worker processes, the official openai client."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest

from llmspool.shared import keys
from tests.helpers import Stack

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "Hi"}]


def test_chat_not_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake", messages=HI, max_tokens=5)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason == "length"
    assert len(reply.choices[0].message.content.split()) == 5
    assert reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens == 1
    assert reply.usage.total_tokens == 6


def test_chat_streamed_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake",
            messages=HI,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="fake", messages=HI, max_tokens=6)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


def test_completion_streamed_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="fake", prompt="Say something", max_tokens=4)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model="fake", prompt="Say something", max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_stop_sequence_and_seed(client: openai.OpenAI) -> None:
    base = client.completions.create(model="fake", prompt="x", max_tokens=8).choices[0].text
    word = base.split()[2]
    stopped = client.completions.create(model="fake", prompt="x", max_tokens=8, stop=[" " + word])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == base[: base.index(" " + word)]
    seeded = client.completions.create(model="fake", prompt="x", max_tokens=8, seed=3)
    assert seeded.choices[0].text != base


def test_raw_sse_framing(fake_stack: Stack) -> None:
    body = {"model": "fake", "messages": HI, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", f"{fake_stack.base_url}/v1/chat/completions", json=body, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e and not e.startswith(":")]
    # every event but [DONE] carries an id (resumable streams), then its data
    assert all(e.startswith("id: ") and "\ndata: " in e for e in events[:-1])
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.split("\ndata: ", 1)[1]) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_models_and_health(client: openai.OpenAI, fake_stack: Stack) -> None:
    assert [m.id for m in client.models.list()] == ["fake"]
    assert client.models.retrieve("fake").id == "fake"
    assert httpx.get(f"{fake_stack.base_url}/health").json() == {"status": "ok"}


def test_queue_and_group_visible_with_redis_cli(client: openai.OpenAI, fake_stack: Stack) -> None:
    client.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    groups = fake_stack.redis.cli("XINFO", "GROUPS", keys.requests_stream("fake"))
    assert keys.GROUP in groups
    assert fake_stack.redis.cli("XLEN", keys.requests_stream("fake")).strip() == "1"
    pending = fake_stack.redis.cli("XPENDING", keys.requests_stream("fake"), keys.GROUP)
    assert pending.splitlines()[0].strip() == "0"  # acknowledged after the last frame
    entry = fake_stack.redis.cli("XRANGE", keys.requests_stream("fake"), "-", "+")
    assert "request_id" in entry and "chatcmpl-" in entry


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="fake", input=["a b", "c"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 8
    b64 = client.embeddings.create(model="fake", input="a b", encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(result.data[0].embedding)


def post(stack: Stack, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": HI}, 404, "model"),
        ({"model": "fake"}, 400, "messages"),
        ({"model": "fake", "messages": []}, 400, "messages"),
        ({"model": "fake", "messages": "hi"}, 400, "messages"),
        (
            {"model": "fake", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        ({"model": "fake", "messages": HI, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "fake", "messages": HI, "max_tokens": -5}, 400, "max_tokens"),
        ({"model": "fake", "messages": HI, "max_tokens": "ten"}, 400, "max_tokens"),
        ({"model": "fake", "messages": HI, "temperature": 9}, 400, "temperature"),
        ({"model": "fake", "messages": HI, "n": 200}, 400, "n"),
        ({"model": "fake", "messages": HI, "top_k": 3}, 400, "top_k"),
        ({"model": "fake", "messages": HI, "surprise": 1}, 400, "surprise"),
        (
            {
                "model": "fake",
                "messages": HI,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            400,
            "tool_choice",
        ),
        (
            {
                "model": "fake",
                "messages": HI,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
            },
            400,
            "response_format",
        ),
        ({"model": "fake", "messages": HI, "max_tokens": 10**6}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_errors(
    fake_stack: Stack, body: dict[str, object], status: int, param: str
) -> None:
    response = post(fake_stack, "/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert response.headers["x-should-retry"] == "false"


def test_malformed_json_is_400(fake_stack: Stack) -> None:
    response = post(
        fake_stack,
        "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_openai_style(fake_stack: Stack) -> None:
    response = httpx.get(f"{fake_stack.base_url}/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=HI, max_tokens=0)


def test_no_worker_before_deadline_is_a_clear_504(stack_factory) -> None:  # type: ignore[no-untyped-def]
    stack = stack_factory('[[models]]\nname = "idle"\nbackend = "fake"\ntimeout = 1\n')
    stack.start_api()
    response = post(stack, "/v1/chat/completions", json={"model": "idle", "messages": HI})
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "false"
    assert "No worker" in response.json()["error"]["message"]
    # the job stayed queued; a late worker skips it as expired rather than running it
    waiting = keys.waiting(keys.requests_stream("idle"))
    assert stack.redis.cli("XLEN", waiting).strip() == "1"
