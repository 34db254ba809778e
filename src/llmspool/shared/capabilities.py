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
    #: ``tool_choice`` values honoured besides "none" (auto, required, named); with any,
    #: ``tools`` and the legacy ``functions`` are honoured (shared/outputs.py checks the rest).
    tool_choices: frozenset[str] = frozenset()
    #: Constraints on the text it applies: json_schema, json_object, regex, choice, grammar.
    constraints: frozenset[str] = frozenset()

    def honours(self, name: str) -> bool:
        return name in CORE or name in self.parameters or name in self.output_parameters

    @property
    def output_parameters(self) -> frozenset[str]:
        """The tool and structured-output parameters its tool choices and constraints make."""
        names: set[str] = set()
        if self.tool_choices:
            names |= {"tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"}
        if self.constraints & {"json_schema", "json_object"}:
            names.add("response_format")
        if self.constraints:
            names.add("structured_outputs")
        guided = {"json_schema": "guided_json", "regex": "guided_regex"}
        guided |= {"choice": "guided_choice", "grammar": "guided_grammar"}
        names |= {guided[kind] for kind in self.constraints if kind in guided}
        return frozenset(names)

    @property
    def features(self) -> list[str]:
        """What ``/v1/models`` lists: the reply features this backend gives."""
        found = {"n", "echo"}
        if "logprobs" in self.parameters:
            found.add("logprobs")
        if self.tool_choices:
            found.add("tools")
        if self.constraints:
            found.add("structured_output")
        return sorted(found)

    def listed(self) -> list[str]:
        """Every parameter honoured, for ``/v1/models``."""
        listed = CORE | self.parameters | self.output_parameters
        return sorted(listed - {"model", "input", "encoding_format"})


_TOOLS = frozenset({"auto", "required", "named"})
_JSON = frozenset({"json_schema", "json_object"})
_CONSTRAINTS = _JSON | {"regex", "choice", "grammar"}

TABLE: dict[str, BackendCapabilities] = {
    # deterministic text: the sampling knobs change nothing, so only the plain ones are taken;
    # tool calls and JSON bodies are scripted (consumers/backends/fake.py)
    "fake": BackendCapabilities(_PENALTIES | _LOGPROBS, False, _TOOLS, _JSON | {"choice"}),
    "llama_cpp": BackendCapabilities(
        _PENALTIES | _LOGPROBS | _EXTENSIONS | {"logit_bias"}, False, _TOOLS, _CONSTRAINTS
    ),
    "vllm": BackendCapabilities(
        _PENALTIES | _LOGPROBS | _EXTENSIONS | {"logit_bias", "chat_template_kwargs"},
        False,
        _TOOLS,
        _CONSTRAINTS,
    ),
    # no presence/frequency penalties in transformers' generate; no constrained decoding
    "transformers": BackendCapabilities(
        _LOGPROBS | _EXTENSIONS | {"chat_template_kwargs"}, False, frozenset({"auto"})
    ),
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
        tool_choices=_TOOLS,
        constraints=_CONSTRAINTS,
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
        if not caps.honours(name) and _value(body, name) not in NOT_SET.get(name, (None,))
    ]
    if not caps.passthrough:
        refused += [name for name in body.model_extra or {} if not caps.honours(name)]
    return refused


def _value(body: BaseModel, name: str) -> object:
    """A parameter's value as the request wrote it (a typed one, ``response_format``, as
    JSON), to compare with :data:`NOT_SET`."""
    value = getattr(body, name)
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return value
