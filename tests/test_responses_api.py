"""/v1/responses end to end on the fake engine, through the official openai client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack, fake_text

pytestmark = pytest.mark.e2e

#: The fake model ends its answers after 6 tokens ("stop"), so a response completes.
CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 8
max_attempts = 2
[models.options]
ttft_ms = 5
itl_ms = 2
eos_after = 6
faults = true
"""


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = module_stack(redis_server, tmp_path_factory.mktemp("responses"), CONFIG)
    stack.start_api()
    stack.start_worker("fake")
    yield stack
    stack.stop()


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)


def test_a_string_input(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake", input="the quick brown fox")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "fake"
    assert response.output_text == fake_text("the quick brown fox", 6)
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.content[0].type == "output_text"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 6)
    assert response.usage.total_tokens == 10


def test_the_body_is_openais_response_object(stack: Stack) -> None:
    body = {"model": "fake", "input": "hello", "metadata": {"k": "v"}, "temperature": 0.5}
    raw = httpx.post(f"{stack.base_url}/v1/responses", json=body, timeout=30).json()
    response = Response.model_validate(raw)  # validates, unlike the client's lenient parsing
    assert response.metadata == {"k": "v"} and response.temperature == 0.5


def test_instructions_and_messages(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="fake",
        instructions="be brief",
        input=[
            {"role": "user", "content": "one two"},
            {"role": "assistant", "content": "three"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "four"}],
            },
        ],
    )
    assert response.instructions == "be brief"
    assert response.output_text == fake_text("be brief\none two\nthree\nfour", 6)
    assert response.usage is not None and response.usage.input_tokens == 6


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake", input="hello", max_output_tokens=3)
    assert response.status == "incomplete" and response.max_output_tokens == 3
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.output_text == fake_text("hello", 3)


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model="fake", input="one two", instructions="not kept")
    second = client.responses.create(model="fake", input="three", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # the prompt: the first exchange (without its instructions), then the new input
    prompt = f"one two\n{first.output_text}\nthree"
    assert second.output_text == fake_text(prompt, 6)
    assert second.usage is not None and second.usage.input_tokens == len(prompt.split())
    third = client.responses.create(model="fake", input="four", previous_response_id=second.id)
    assert third.output_text == fake_text(f"{prompt}\n{second.output_text}\nfour", 6)


def test_retrieve_and_delete(client: openai.OpenAI) -> None:
    created = client.responses.create(model="fake", input="keep me")
    again = client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == created.output_text
    assert again.status == "completed"
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    unkept = client.responses.create(model="fake", input="forget me", store=False)
    assert unkept.status == "completed" and unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="fake", input="x", previous_response_id=unkept.id)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"


EVENTS_OF_A_TEXT_REPLY = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 6,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_stream_yields_typed_events_and_a_final_response(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="fake", input="stream this")
    with client.responses.stream(model="fake", input="stream this") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [e.type for e in events if e.type != "response.output_text.delta"] == [
        t for t in EVENTS_OF_A_TEXT_REPLY if t != "response.output_text.delta"
    ]
    assert deltas and "".join(e.delta for e in deltas) == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == whole.output_text and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 6
    assert client.responses.retrieve(final.id).output_text == whole.output_text


def test_create_with_stream_true(stack: Stack, client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="fake", input="x y", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert len(item_ids) == 1  # one message
    body = {"model": "fake", "input": "x y", "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/v1/responses", json=body, timeout=30) as r:
        raw = r.read().decode()
    first = raw.split("\n\n")[0].split("\n")
    assert first[0] == "event: response.created" and first[1].startswith("data: {")


def test_a_cut_stream_is_incomplete(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model="fake", input="x", max_output_tokens=2, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details is not None


def test_a_failing_stream_ends_with_response_failed(client: openai.OpenAI) -> None:
    # the first attempt fails after two tokens; its retry cannot be spliced into the stream
    stream = client.responses.create(model="fake", input="[[fake:raise@2x1]]", stream=True)
    events = list(stream)
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert events[-1].response.error.code == "stream_interrupted"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"some_new_field": 1}, "some_new_field"),
        ({"max_output_tokens": 100_000}, "max_output_tokens"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(
    client: openai.OpenAI, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="fake", input="x", extra_body=extra)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param


def test_unknown_previous_response_and_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="fake", input="x", previous_response_id="resp_nope")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
