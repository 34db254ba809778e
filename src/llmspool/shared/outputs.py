"""Tool calls and structured output: what each backend honours, and the checks at the API.

What each backend honours is its row of the capability table (shared/capabilities.py:
``tool_choices`` and ``constraints``); the request check (:func:`check_outputs`) reads it and
docs/backends.md shows it. A parameter a backend does not honour is refused with a 400
naming it; so is a malformed one (a ``tool_choice`` naming an unknown function, a schema that
is not an object).
"""

from __future__ import annotations

import json
from typing import Literal

from llmspool.shared import capabilities
from llmspool.shared.capabilities import BackendCapabilities
from llmspool.shared.errors import InvalidRequest, UnsupportedParameter
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FunctionDefinition,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    NamedToolChoice,
)

ToolChoiceKind = Literal["auto", "required", "named"]
#: A constraint on the generated text: a JSON schema, any JSON object, a regular expression,
#: one of a list of choices, or a grammar.
ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


def tool_choice_kind(body: ChatCompletionRequest) -> Literal["none", ToolChoiceKind]:
    """How the request lets the model call its tools ("none" when it has none)."""
    if not body.function_tools():
        return "none"
    choice = body.tool_choice if body.tools else body.function_call
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return "named"


def forced_function(body: ChatCompletionRequest) -> str | None:
    """The function a named ``tool_choice`` (or legacy ``function_call``) forces."""
    choice = body.tool_choice if body.tools else body.function_call
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    if choice is not None and not isinstance(choice, str):
        return choice.name
    return None


def constraints(body: ChatCompletionRequest | CompletionRequest) -> dict[str, ConstraintKind]:
    """The constraints a request puts on its text, by the parameter that asks for each."""
    found: dict[str, ConstraintKind] = {}
    if isinstance(body, ChatCompletionRequest):
        if isinstance(body.response_format, JsonSchemaResponseFormat):
            found["response_format"] = "json_schema"
        elif isinstance(body.response_format, JsonObjectFormat):
            found["response_format"] = "json_object"
    guided: dict[str, ConstraintKind] = {
        "guided_json": "json_schema",
        "guided_regex": "regex",
        "guided_choice": "choice",
        "guided_grammar": "grammar",
    }
    found |= {name: kind for name, kind in guided.items() if getattr(body, name) is not None}
    if body.structured_outputs is not None:
        kinds = _structured_kinds(body)
        if len(kinds) != 1:
            raise InvalidRequest(
                "structured_outputs must set exactly one of json, regex, choice, grammar, "
                "json_object.",
                param="structured_outputs",
            )
        found["structured_outputs"] = kinds[0]
    return found


def _structured_kinds(body: ChatCompletionRequest | CompletionRequest) -> list[ConstraintKind]:
    spec = body.structured_outputs
    if spec is None:
        return []
    kinds: list[ConstraintKind] = []
    if spec.json_ is not None:
        kinds.append("json_schema")
    named: tuple[ConstraintKind, ...] = ("regex", "choice", "grammar")
    kinds += [kind for kind in named if getattr(spec, kind) is not None]
    if spec.json_object:
        kinds.append("json_object")
    return kinds


def check_outputs(body: ChatCompletionRequest | CompletionRequest, backend: str) -> None:
    """Refuse, naming the parameter, what ``backend`` cannot honour or what is malformed."""
    honoured = capabilities.of(backend)
    found = constraints(body)
    if len(found) > 1:
        names = ", ".join(found)
        raise InvalidRequest(f"Only one of {names} may constrain a reply.", param=next(iter(found)))
    for param, kind in found.items():
        _check_schema(body, param)
        if kind not in honoured.constraints:
            raise UnsupportedParameter(
                f"'{param}' ({kind}) is not supported by this model's backend ({backend}).",
                param=param,
            )
    if isinstance(body, ChatCompletionRequest):
        _check_tools(body, honoured, backend)


def _check_schema(body: ChatCompletionRequest | CompletionRequest, param: str) -> None:
    """A JSON schema given as text must be JSON; ``json_schema`` must carry its schema."""
    if param == "response_format":
        response_format = getattr(body, "response_format", None)
        missing = isinstance(response_format, JsonSchemaResponseFormat) and (
            response_format.json_schema.schema_ is None
        )
        if missing:
            raise InvalidRequest("response_format.json_schema needs a 'schema'.", param=param)
        return
    schema = json_schema_of(body)
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(f"The JSON schema of '{param}' is not a JSON object.", param=param)


def json_schema_of(body: ChatCompletionRequest | CompletionRequest) -> object | None:
    """The JSON schema a request constrains its reply to, decoded; None if it names none."""
    raw: object = None
    if isinstance(body, ChatCompletionRequest) and isinstance(
        body.response_format, JsonSchemaResponseFormat
    ):
        raw = body.response_format.json_schema.schema_
    elif body.guided_json is not None:
        raw = body.guided_json
    elif body.structured_outputs is not None:
        raw = body.structured_outputs.json_
    if isinstance(raw, str):
        try:
            decoded: object = json.loads(raw)
        except ValueError:
            return raw
        return decoded
    return raw


def _check_tools(body: ChatCompletionRequest, honoured: BackendCapabilities, backend: str) -> None:
    param = "tools" if body.tools or not body.functions else "functions"
    choice_param = "tool_choice" if param == "tools" else "function_call"
    if body.tools and body.functions:
        raise InvalidRequest("Use either tools or the legacy functions, not both.", param=param)
    functions = body.function_tools()
    _check_definitions(functions, param)
    kind = tool_choice_kind(body)
    if not functions:
        if (body.tool_choice or body.function_call) not in (None, "none"):
            raise InvalidRequest(f"'{choice_param}' needs '{param}'.", param=choice_param)
        return
    if kind == "none":
        return
    named = forced_function(body)
    if named is not None and named not in {f.name for f in functions}:
        raise InvalidRequest(
            f"'{choice_param}' names the function '{named}', which '{param}' does not define.",
            param=choice_param,
        )
    if not honoured.tool_choices:
        raise UnsupportedParameter(
            f"'{param}' is not supported by this model's backend ({backend}).", param=param
        )
    if kind not in honoured.tool_choices:
        raise UnsupportedParameter(
            f"'{choice_param}' {kind} is not supported by this model's backend ({backend}); "
            f"it honours: none, {', '.join(sorted(honoured.tool_choices))}.",
            param=choice_param,
        )


def _check_definitions(functions: list[FunctionDefinition], param: str) -> None:
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"'{param}' defines a function name twice.", param=param)
    for function in functions:
        schema = function.parameters
        if schema is not None and schema.get("type", "object") != "object":
            raise InvalidRequest(
                f"The parameters of the function '{function.name}' must be a JSON schema "
                "of type object.",
                param=param,
            )
