"""The openai backend beyond the contract: how upstream failures reach the client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from llmspool.consumers.backends.openai import OpenAIBackend, Options, upstream_error
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ServiceUnavailable,
)
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import CompletionRequest
from tests.engines import LlamaServer
from tests.helpers import free_port


def proxy(options: Options) -> ModelConfig:
    return ModelConfig(name="proxy", backend="openai", options=options.model_dump())


def status_error(status: int, body: object) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://upstream/v1/chat/completions")
    response = httpx.Response(status, request=request, json=body)
    return openai.APIStatusError("upstream said no", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, InvalidRequest, "upstream_invalid_request"),
        (401, EngineError, "upstream_auth"),
        (404, EngineError, "upstream_not_found"),
        (429, ServiceUnavailable, "upstream_rate_limited"),
        (500, EngineError, "upstream_error"),
        (503, EngineError, "upstream_error"),
    ],
)
def test_upstream_status_errors_map_to_llmspool_errors(
    status: int, kind: type[Exception], code: str
) -> None:
    error = upstream_error(status_error(status, {"error": {"message": "no", "param": "stop"}}))
    assert type(error) is kind and error.code == code
    assert f"upstream error {status}" in error.message


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "too long", "code": "context_length_exceeded"}},  # OpenAI's
        {"object": "error", "message": "This model's maximum context length is 1024 tokens."},
    ],
)
def test_an_upstreams_too_long_prompt_is_context_length_exceeded(body: object) -> None:
    request = httpx.Request("POST", "http://upstream/v1/chat/completions")
    response = httpx.Response(400, request=request, json=body)
    message = str(body)  # the client's message quotes the body
    error = upstream_error(openai.APIStatusError(message, response=response, body=body))
    assert isinstance(error, ContextLengthExceeded) and error.status_code == 400


def test_a_rejected_parameter_keeps_its_name() -> None:
    error = upstream_error(status_error(400, {"error": {"message": "bad", "param": "top_p"}}))
    assert error.param == "top_p"


def test_an_unreachable_upstream_is_service_unavailable() -> None:
    request = httpx.Request("GET", "http://upstream/v1/models")
    error = upstream_error(openai.APIConnectionError(request=request))
    assert isinstance(error, ServiceUnavailable) and "unreachable" in error.message


async def test_start_against_nothing_names_the_problem() -> None:
    options = Options(base_url=f"http://127.0.0.1:{free_port()}/v1")
    backend = OpenAIBackend(proxy(options), options)
    with pytest.raises(ConfigError, match="unreachable"):
        await backend.start()


@pytest.mark.llama
@pytest.mark.upstream
async def test_upstream_failures_reach_the_job_clearly(upstream: LlamaServer) -> None:
    options = Options(base_url=upstream.base_url, model="upstream-gemma")
    backend = OpenAIBackend(proxy(options), options)
    await backend.start()
    body = CompletionRequest(model="proxy", prompt="word " * 1500, max_tokens=4, stream=True)
    job = Job(
        request_id="r", kind=JobKind.COMPLETION, model="proxy", body=body, deadline=time.time() + 60
    )
    try:
        # Over its context, llama.cpp's server answers 200 and an empty stream: a 400 here.
        with pytest.raises(ContextLengthExceeded, match="without a reply"):
            [d async for d in backend.generate(job)]
        # Started without embeddings, it answers 500 with its own message.
        with pytest.raises(EngineError, match=r"upstream error 500: .*embedding=True"):
            await backend.embed(["hello"])
    finally:
        await backend.stop()


def test_repeated_call_heads_from_the_upstream_are_sent_once() -> None:
    from openai.types.chat import ChatCompletionChunk

    from llmspool.consumers.backends.openai import ChunkReader

    def chunk(arguments: str) -> ChatCompletionChunk:
        call = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": arguments},
        }
        choice = {"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}
        return ChatCompletionChunk.model_validate(
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [choice],
            }
        )

    reader = ChunkReader(chat=True)
    first, second = (reader.read(chunk(a)) for a in ('{"a"', ": 1}"))
    assert first is not None and second is not None
    assert first.tool_calls and first.tool_calls[0].id == "call_1"
    (piece,) = second.tool_calls or []
    assert piece.id is None and piece.function is not None and piece.function.name is None
    assert piece.function.arguments == ": 1}"
