"""What each backend honours: the one table the request check and ``/v1/models`` read.

A request parameter is honoured by the model's backend or refused with a 400 naming it, never
silently dropped. The table is static and keyed by backend name, so the API checks requests
without importing any backend. Each backend honours exactly what its row says: the contract
suite (tests/test_backend_contract.py) runs every parameter of each row on its engine, and
tests/test_capabilities.py checks that every other one is refused by name.

A parameter set to a value that means "not set" (:data:`NOT_SET`) is accepted everywhere.
Fields a request model does not declare are refused, unless the backend passes them through
to its engine (the ``openai`` backend forwards them to its upstream, which answers for them).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

#: Honoured by every generation backend: the prompt and the plain sampling parameters, the
#: reply's form, ``n`` and ``echo`` (run by the worker, see consumers/worker.py), and ``user``
#: and ``metadata`` (kept in the request log).
CORE: frozenset[str] = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "n",
        "echo",
        "user",
        "metadata",
        # embeddings
        "input",
        "encoding_format",
    }
)

#: Values that mean the same as leaving the parameter out; accepted whoever serves the model.
NOT_SET: dict[str, tuple[object, ...]] = {
    "audio": (None,),
    "best_of": (None, 1),
    "dimensions": (None,),
    "echo": (None, False),
    "function_call": (None, "none"),
    "functions": (None, []),
    "ignore_eos": (None, False),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "min_tokens": (None, 0),
    "modalities": (None, ["text"]),
    "n": (None, 1),
    "parallel_tool_calls": (None, True, False),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "response_format": (None, {"type": "text"}),
    "service_tier": (None, "auto", "default"),
    "stop_token_ids": (None, []),
    "store": (None, False),
    "stream": (None, False),
    "suffix": (None, ""),
    "tool_choice": (None, "none", "auto"),
    "tools": (None, []),
    "top_logprobs": (None, 0),
    "chat_template_kwargs": (None, {}),
}

_PENALTIES = frozenset({"presence_penalty", "frequency_penalty"})
_LOGPROBS = frozenset({"logprobs", "top_logprobs"})
#: vLLM's sampling extensions.
_EXTENSIONS = frozenset(
    {"top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids"}
)


@dataclass(frozen=True)
class BackendCapabilities:
    """What one backend honours beyond :data:`CORE`."""

    parameters: frozenset[str]
    #: Unknown request fields go to the engine (which answers for them) instead of a 400.
    passthrough: bool = False

    def honours(self, name: str) -> bool:
        return name in CORE or name in self.parameters

    @property
    def features(self) -> list[str]:
        """What ``/v1/models`` lists: the reply features this backend gives."""
        found = {"n", "echo"}
        if "logprobs" in self.parameters:
            found.add("logprobs")
        if "tools" in self.parameters:
            found.add("tools")
        if "response_format" in self.parameters:
            found.add("structured_output")
        return sorted(found)

    def listed(self) -> list[str]:
        """Every parameter honoured, for ``/v1/models``."""
        return sorted((CORE | self.parameters) - {"model", "input", "encoding_format"})


TABLE: dict[str, BackendCapabilities] = {
    # deterministic text: the sampling knobs change nothing, so only the plain ones are taken
    "fake": BackendCapabilities(_PENALTIES | _LOGPROBS),
    "llama_cpp": BackendCapabilities(_PENALTIES | _LOGPROBS | _EXTENSIONS | {"logit_bias"}),
    "vllm": BackendCapabilities(
        _PENALTIES | _LOGPROBS | _EXTENSIONS | {"logit_bias", "chat_template_kwargs"}
    ),
    # no presence/frequency penalties in transformers' generate
    "transformers": BackendCapabilities(_LOGPROBS | _EXTENSIONS | {"chat_template_kwargs"}),
    "openai": BackendCapabilities(
        _PENALTIES
        | _LOGPROBS
        | _EXTENSIONS
        | {
            "logit_bias",
            "chat_template_kwargs",
            "reasoning_effort",
            "service_tier",
            "store",
            "prediction",
        },
        passthrough=True,
    ),
}

#: A backend missing from the table (a plugin) honours the core only.
_CORE_ONLY = BackendCapabilities(frozenset())


def of(backend: str) -> BackendCapabilities:
    """The capabilities of backend ``backend``."""
    return TABLE.get(backend, _CORE_ONLY)


def refused_parameters(body: BaseModel, backend: str) -> list[str]:
    """The parameters of ``body`` that ``backend`` does not honour, in the body's order."""
    caps = of(backend)
    refused = [
        name
        for name in type(body).model_fields
        if not caps.honours(name) and getattr(body, name) not in NOT_SET.get(name, (None,))
    ]
    if not caps.passthrough:
        refused += [name for name in body.model_extra or {} if not caps.honours(name)]
    return refused
