"""The capability table: every parameter a backend does not honour is refused with its name,
by the one request check the routes and the batch validator share."""

from __future__ import annotations

from typing import Any

import pytest

from llmspool.shared import capabilities
from llmspool.shared.checks import check_request
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import UnsupportedParameter
from llmspool.shared.messages import JobKind
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest

#: A value that asks for something, per parameter a chat request may carry.
CHAT_VALUES: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "wav"},
    "chat_template_kwargs": {"enable_thinking": False},
    "frequency_penalty": 0.5,
    "function_call": "auto",
    "functions": [{"name": "f"}],
    "ignore_eos": True,
    "logit_bias": {"5": 1.0},
    "logprobs": True,
    "min_p": 0.1,
    "min_tokens": 3,
    "modalities": ["text", "audio"],
    "n": 2,
    "parallel_tool_calls": None,
    "prediction": {"type": "content", "content": "x"},
    "presence_penalty": 0.5,
    "reasoning_effort": "low",
    "repetition_penalty": 1.1,
    "response_format": {"type": "json_object"},
    "service_tier": "flex",
    "stop_token_ids": [1],
    "store": True,
    "tool_choice": "required",
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "top_k": 5,
    "vendor_knob": 1,  # a field llmspool does not know
}
#: What a value above needs beside it to be a well-formed request.
COMPANIONS: dict[str, dict[str, Any]] = {
    "tool_choice": {"tools": CHAT_VALUES["tools"]},
    "function_call": {"functions": CHAT_VALUES["functions"]},
}
COMPLETION_VALUES: dict[str, Any] = {"best_of": 3, "suffix": "end", "logprobs": 2, "echo": True}


def model(backend: str) -> ModelConfig:
    return ModelConfig(name="m", backend=backend, options={"model": "x", "base_url": "http://u"})


def chat(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def cases() -> list[Any]:
    found = []
    for backend in capabilities.TABLE:
        for name, value in CHAT_VALUES.items():
            found.append(pytest.param(backend, "chat", name, value, id=f"{backend}-{name}"))
        for name, value in COMPLETION_VALUES.items():
            found.append(pytest.param(backend, "completion", name, value, id=f"{backend}-{name}"))
    return found


@pytest.mark.parametrize(("backend", "kind", "name", "value"), cases())
def test_each_parameter_is_honoured_or_refused_by_name(
    backend: str, kind: str, name: str, value: Any
) -> None:
    if kind == "chat":
        body: Any = chat(**{name: value, **COMPANIONS.get(name, {})})
        job_kind = JobKind.CHAT
    else:
        body = CompletionRequest.model_validate({"model": "m", "prompt": "p", name: value})
        job_kind = JobKind.COMPLETION
    row = capabilities.of(backend)
    honoured = row.honours(name) or (row.passthrough and name in (body.model_extra or {}))
    if name == "tool_choice":  # tools honoured, but a forced call only where it can be
        honoured = "required" in row.tool_choices
    if value is None or honoured:
        check_request(body, model(backend), job_kind)
        return
    with pytest.raises(UnsupportedParameter) as caught:
        check_request(body, model(backend), job_kind)
    assert caught.value.param == name and name in caught.value.message
    assert backend in caught.value.message


def test_not_set_values_pass_everywhere() -> None:
    body = chat(n=1, logprobs=False, store=False, service_tier="auto", stop_token_ids=[])
    for backend in capabilities.TABLE:
        check_request(body, model(backend), JobKind.CHAT)


def test_the_model_card_lists_features_and_parameters() -> None:
    row = capabilities.of("llama_cpp")
    assert row.features == ["echo", "logprobs", "n", "structured_output", "tools"]
    assert "top_k" in row.listed() and "chat_template_kwargs" not in row.listed()
    assert capabilities.of("a-plugin").listed() == sorted(
        capabilities.CORE - {"model", "input", "encoding_format"}
    )
