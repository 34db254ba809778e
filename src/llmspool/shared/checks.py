"""Checks a validated OpenAI request must pass before it is queued for a model.

Shared by the interactive routes and the batch validator, so a batch line is refused for
exactly the reasons the same request sent alone would be.
"""

from __future__ import annotations

from typing import Any

from llmspool.shared.config import Capability, ModelConfig
from llmspool.shared.errors import UnsupportedCapability, UnsupportedParameter
from llmspool.shared.messages import JobKind
from llmspool.shared.protocol import unsupported_parameters

_KIND_CAPABILITY: dict[JobKind, Capability] = {
    JobKind.CHAT: "chat",
    JobKind.COMPLETION: "completion",
    JobKind.EMBEDDING: "embedding",
}


def check_request(body: Any, model: ModelConfig, kind: JobKind) -> None:
    """Raise an :class:`~llmspool.shared.errors.InvalidRequest` naming what ``model`` cannot
    honour in ``body``."""
    for param in unsupported_parameters(body):
        raise UnsupportedParameter(
            f"'{param}' is not supported by llmspool's engines; remove it from the request.",
            param=param,
        )
    capability = _KIND_CAPABILITY[kind]
    if capability not in model.capabilities:
        raise UnsupportedCapability(
            f"The model '{model.name}' does not serve {capability} requests "
            f"(it serves: {', '.join(model.capabilities)}).",
            param="model",
        )
    max_tokens = getattr(body, "requested_max_tokens", lambda: None)()
    if max_tokens is not None and max_tokens > model.context_length:
        raise UnsupportedParameter(
            f"max_tokens is {max_tokens}, above this model's context length "
            f"{model.context_length}.",
            param="max_tokens",
            code="invalid_value",
        )
