"""OpenAI parity on gemma-3-270m (llama.cpp) through the real API and worker: logprobs, n, and
a prompt over the context refused at once."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from llmspool.shared import keys
from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.llama]

MODEL = "gemma-3-270m"
CONFIG = f"""
[[models]]
name = "{MODEL}"
backend = "llama_cpp"
max_attempts = 3
[models.options]
n_threads = 2
n_ctx = 512
"""
HI = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = module_stack(redis_server, tmp_path_factory.mktemp("parity-llama"), CONFIG)
    stack.start_api()
    stack.start_worker(MODEL)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)


def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "messages": HI, "max_tokens": 5, "temperature": 0}
    reply = client.chat.completions.create(**args, logprobs=True, top_logprobs=3)  # type: ignore[call-overload]
    content = reply.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token  # greedy: the likeliest token
    stream = client.chat.completions.create(**args, logprobs=True, top_logprobs=3, stream=True)  # type: ignore[call-overload]
    streamed = [
        t for c in stream for ch in c.choices if ch.logprobs for t in ch.logprobs.content or []
    ]
    assert [(t.token, round(t.logprob, 3)) for t in streamed] == [
        (t.token, round(t.logprob, 3)) for t in content
    ]


def test_completion_logprobs(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def test_n_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=HI, n=2, max_tokens=6, temperature=1.0, seed=5
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens <= 12
    one = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6)
    assert one.usage is not None and reply.usage.prompt_tokens == one.usage.prompt_tokens


def test_a_prompt_over_the_context_is_a_400_at_once(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="word " * 600, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"
    assert stack.pending(MODEL) == 0  # acknowledged
    assert stack.redis.client().xlen(keys.dead_stream(MODEL)) == 0  # never dead-lettered
    assert "failed (attempt" not in stack.log(f"worker-{MODEL}.log")  # never retried


def test_models_show_the_engines_context_length(client: openai.OpenAI) -> None:
    card = client.models.retrieve(MODEL)
    assert (card.model_extra or {})["max_model_len"] == 512
    serving = (card.model_extra or {})["llmspool"]
    assert {"logprobs", "n"} <= set(serving["features"])
    assert {"top_k", "min_p", "logit_bias"} <= set(serving["parameters"])
