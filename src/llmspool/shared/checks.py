"""The checks a validated OpenAI request must pass before it is queued for a model.

One path for the interactive routes (``producer/routes.py``) and the batch validator
(``batch/lines.py``), so a batch line is refused for exactly the reasons the same request sent
alone would be, with the same error.
"""

from __future__ import annotations

from llmspool.shared import capabilities
from llmspool.shared.config import Capability, ModelConfig
from llmspool.shared.errors import InvalidRequest, UnsupportedCapability, UnsupportedParameter
from llmspool.shared.messages import JobKind, RequestBody
from llmspool.shared.outputs import check_outputs
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from llmspool.shared.settings import Settings
from llmspool.shared.tokens import (
    DetokenizeRequest,
    TokenizeRequest,
    unsupported_tokenize_parameters,
)

_KIND_CAPABILITY: dict[JobKind, Capability] = {
    JobKind.CHAT: "chat",
    JobKind.COMPLETION: "completion",
    JobKind.EMBEDDING: "embedding",
}


def check_request(body: RequestBody, model: ModelConfig, kind: JobKind) -> None:
    """Raise an :class:`~llmspool.shared.errors.InvalidRequest` naming what ``model`` cannot
    honour in ``body``."""
    if isinstance(body, TokenizeRequest):
        _check_tokenize(body)  # the same parameters on every backend
    elif not isinstance(body, DetokenizeRequest):
        check_parameters(body, model)
    if isinstance(body, ChatCompletionRequest | CompletionRequest):
        check_outputs(body, model.backend)
    capability = _KIND_CAPABILITY.get(kind)  # tokenizing needs no capability
    if capability is not None and capability not in model.capabilities:
        raise UnsupportedCapability(
            f"The model '{model.name}' does not serve {capability} requests "
            f"(it serves: {', '.join(model.capabilities)}).",
            param="model",
        )
    max_tokens = requested_max_tokens(body)
    if max_tokens is not None and model.context_length and max_tokens > model.context_length:
        raise UnsupportedParameter(
            f"max_tokens is {max_tokens}, above this model's context length "
            f"{model.context_length}.",
            param="max_tokens",
            code="invalid_value",
        )


def _check_tokenize(body: TokenizeRequest) -> None:
    for param in unsupported_tokenize_parameters(body):
        raise UnsupportedParameter(
            f"'{param}' is not supported by llmspool's /tokenize; remove it from the request.",
            param=param,
        )


def requested_max_tokens(body: RequestBody) -> int | None:
    """The tokens a generation request asks for at most; None for other requests (or unset)."""
    if isinstance(body, EmbeddingRequest | TokenizeRequest | DetokenizeRequest):
        return None
    return body.requested_max_tokens()


def check_size(body: RequestBody, settings: Settings) -> None:
    """Bound what one request may carry: messages, and characters of prompt or input."""
    if isinstance(body, ChatCompletionRequest):
        if len(body.messages) > settings.max_messages:
            raise InvalidRequest(
                f"{len(body.messages)} messages is more than the {settings.max_messages} "
                "a request may carry.",
                param="messages",
                code="array_above_max_length",
            )
        param, chars = "messages", sum(len(m.text()) for m in body.messages)
    elif isinstance(body, CompletionRequest):
        param, chars = "prompt", len(body.prompt_text())
    elif isinstance(body, TokenizeRequest):
        param, chars = "prompt" if body.messages is None else "messages", body.text_chars()
    elif isinstance(body, DetokenizeRequest):
        return
    else:
        param, chars = "input", sum(len(text) for text in body.texts())
    if chars > settings.max_prompt_chars:
        raise InvalidRequest(
            f"The {param} has {chars} characters, more than the {settings.max_prompt_chars} "
            "a request may carry.",
            param=param,
            code="string_above_max_length",
        )


def check_parameters(body: RequestBody, model: ModelConfig) -> None:
    """Refuse, naming it, the first parameter ``model``'s backend does not honour."""
    for param in capabilities.refused_parameters(body, model.backend):
        raise UnsupportedParameter(
            f"'{param}' is not supported by the {model.backend} backend that serves "
            f"'{model.name}'; remove it from the request.",
            param=param,
        )
