"""OpenAI parity through the real API and a fake worker: n choices, logprobs, refused
parameters, and what /v1/models says of a model (its context length and capabilities)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator

import httpx
import openai
import pytest

from llmspool.shared import keys
from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "hello there"}]
CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 8
capabilities = ["chat", "completion"]
[models.options]
itl_ms = 1
max_model_len = 64
"""


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = module_stack(redis_server, tmp_path_factory.mktemp("parity"), CONFIG)
    stack.start_api()
    stack.start_worker("fake")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)


# --------------------------------------------------------------------------- n


def test_n_choices_whole_with_indices_and_summed_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake", messages=HI, n=3, max_tokens=4, seed=7)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert all(texts) and len(set(texts)) == 3  # seeds 7, 8, 9: three different texts
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens == 2  # prompt once
    again = client.chat.completions.create(model="fake", messages=HI, n=3, max_tokens=4, seed=7)
    assert [c.message.content for c in again.choices] == texts


def test_n_choices_streamed_interleaved(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake",
        messages=HI,
        n=2,
        max_tokens=6,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = defaultdict(str)
    finished: dict[int, str] = {}
    order: list[int] = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            order.append(choice.index)
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"}
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)  # choice 1 began before 0 ended
    whole = client.chat.completions.create(model="fake", messages=HI, n=2, max_tokens=6, seed=1)
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert usage is not None and usage.completion_tokens == 12


def test_n_on_completions_with_echo(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="fake", prompt="say it", n=2, max_tokens=3, echo=True, logprobs=1
    )
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.text.startswith("say it") and choice.logprobs is not None
        assert choice.logprobs.text_offset and choice.logprobs.text_offset[0] == len("say it")


# --------------------------------------------------------------------------- logprobs


def test_chat_logprobs_in_openais_shape(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="fake", messages=HI, max_tokens=4, logprobs=True, top_logprobs=3
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None and len(logprobs.content) == 4
    assert "".join(t.token for t in logprobs.content) == reply.choices[0].message.content
    for token in logprobs.content:
        assert token.logprob < 0 and bytes(token.bytes or []) == token.token.encode()
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
    plain = client.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake", messages=HI, max_tokens=5, logprobs=True, top_logprobs=1, stream=True
    )
    tokens = [
        token
        for chunk in stream
        for choice in chunk.choices
        if choice.logprobs is not None and choice.logprobs.content
        for token in choice.logprobs.content
    ]
    assert len(tokens) == 5 and all(len(t.top_logprobs) == 1 for t in tokens)


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI, stack: Stack) -> None:
    reply = client.completions.create(model="fake", prompt="go", max_tokens=4, logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    assert logprobs.top_logprobs is not None and all(len(t) == 2 for t in logprobs.top_logprobs)
    body = {"model": "fake", "prompt": "go", "max_tokens": 4, "logprobs": 2, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json=body) as response:
        chunks = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    offsets = [
        o
        for c in chunks
        for ch in c["choices"]
        if ch["logprobs"]
        for o in ch["logprobs"]["text_offset"]
    ]
    assert offsets == logprobs.text_offset  # offsets run on across chunks


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"min_p": 0.1}, "min_p"),
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"min_tokens": 2}, "min_tokens"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"stop_token_ids": [1]}, "stop_token_ids"),
        ({"logit_bias": {"1": 1.0}}, "logit_bias"),
        ({"chat_template_kwargs": {"x": 1}}, "chat_template_kwargs"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"store": True}, "store"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"guided_regex": "a+"}, "guided_regex"),
    ],
)
def test_refused_parameters_are_named(stack: Stack, body: dict[str, object], param: str) -> None:
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "fake", "messages": HI, "max_tokens": 2, **body},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"]


def test_a_prompt_over_the_context_is_refused_at_once(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="fake", prompt="word " * 80, max_tokens=2)
    assert caught.value.code == "context_length_exceeded"
    assert stack.pending("fake") == 0  # acknowledged, not left for a retry
    assert stack.redis.client().xlen(keys.dead_stream("fake")) == 0  # not dead-lettered


def test_without_max_tokens_the_rest_of_the_context(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake", messages=HI)
    assert reply.usage is not None and reply.usage.completion_tokens == 64 - 2


# --------------------------------------------------------------------------- /v1/models


def test_models_show_the_context_length_and_capabilities(client: openai.OpenAI) -> None:
    card = client.models.retrieve("fake")
    extra = card.model_extra or {}
    assert extra["max_model_len"] == 64  # what the worker's engine says
    status = extra["llmspool"]
    assert {"logprobs", "n", "echo"} <= set(status["features"])
    assert "top_logprobs" in status["parameters"] and "top_k" not in status["parameters"]
