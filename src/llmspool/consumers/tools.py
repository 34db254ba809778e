"""Tool calls and structured output on the engines that generate text.

llama.cpp, vLLM, transformers and the fake engine generate text; this module is the one place
that turns a chat request's tools into prompt text and generated text back into tool calls
(the ``openai`` backend passes its upstream's calls through instead).

The prompt (:func:`plain_prompt`): the tools are described in a system message; an assistant
turn's calls become ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` and a ``tool``
result a user turn ``<tool_response>...</tool_response>``; the model's chat template renders
the messages as for any chat.

The output (:func:`shaped`):

- ``auto``: the model answers text, or calls tools in that same format — one
  ``<tool_call>{json}</tool_call>`` block per call, or a reply that is only the JSON object
  ``{"name": ..., "arguments": {...}}`` naming one of the tools. Text before a call streams as
  it comes; the calls are parsed when the generation ends (what does not parse stays text).
- ``required`` and a named function: generation is constrained (a grammar, or the engine's
  structured outputs) to :func:`call_schema`, the JSON object ``{"name": <a tool>,
  "arguments": <its parameters>}``, and the call streams as it is generated: index, id, type
  and name first, then fragments of the arguments.

A request's constraint on its text (``response_format``, ``structured_outputs``,
``guided_*``) is resolved here too (:class:`Constraint`); each engine applies it its own way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llmspool.consumers.backends.base import Delta, Prompt
from llmspool.shared.messages import Job
from llmspool.shared.outputs import (
    ConstraintKind,
    constraints,
    forced_function,
    json_schema_of,
    tool_choice_kind,
)
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    FinishReason,
    FunctionCallDelta,
    FunctionDefinition,
    ToolCallDelta,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
#: An empty argument list, as a schema.
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class Constraint:
    """What the generated text must match, and the request parameter that asked for it."""

    kind: ConstraintKind
    #: The JSON schema (dict), regex (str), choices (list of str) or grammar (str); None for
    #: any JSON object.
    value: Any
    param: str


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """How a job's output is shaped: the tools it may call and how, and its constraint."""

    functions: tuple[FunctionDefinition, ...] = ()
    choice: Literal["none", "auto", "required", "named"] = "none"
    constraint: Constraint | None = None
    #: The request used the legacy ``functions``: its reply ends with ``function_call``.
    legacy: bool = False

    @property
    def forced(self) -> bool:
        """Whether the reply must be a call (``required`` or a named function)."""
        return self.choice in ("required", "named")


PLAIN = OutputPlan()


def plan_of(job: Job) -> OutputPlan:
    """The output plan of a generation job."""
    body = job.body
    if not isinstance(body, ChatCompletionRequest | CompletionRequest):
        return PLAIN
    constraint = constraint_of(body)
    if not isinstance(body, ChatCompletionRequest) or not body.function_tools():
        return PLAIN if constraint is None else OutputPlan(constraint=constraint)
    functions = tuple(body.function_tools())
    choice = tool_choice_kind(body)
    legacy = body.legacy_functions()
    if choice in ("required", "named"):
        param = "function_call" if legacy else "tool_choice"
        schema = call_schema(functions, forced_function(body))
        constraint = Constraint("json_schema", schema, param)
    return OutputPlan(functions, choice, constraint, legacy)


def constraint_of(body: ChatCompletionRequest | CompletionRequest) -> Constraint | None:
    """The constraint a request's ``response_format``/``structured_outputs``/``guided_*``
    puts on its text (the API has checked that there is at most one)."""
    found = constraints(body)
    if not found:
        return None
    param, kind = next(iter(found.items()))
    spec = body.structured_outputs
    values: dict[ConstraintKind, Any] = {
        "json_schema": json_schema_of(body),
        "json_object": None,
        "regex": body.guided_regex or (spec.regex if spec else None),
        "choice": body.guided_choice or (spec.choice if spec else None),
        "grammar": body.guided_grammar or (spec.grammar if spec else None),
    }
    return Constraint(kind, values[kind], param)


def call_schema(functions: Sequence[FunctionDefinition], named: str | None = None) -> Any:
    """The JSON schema of one call: ``{"name": <a function>, "arguments": <its schema>}``."""
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f.name},
                "arguments": f.parameters or NO_ARGUMENTS,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
        if named is None or f.name == named
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


# --------------------------------------------------------------------------------- the prompt

TOOL_PROMPT = (
    "You can call these functions (JSON schemas of their arguments):\n{functions}\n\n"
    "To call a function, answer with only "
    '{open}{{"name": <function name>, "arguments": <JSON object>}}{close}; '
    "otherwise answer normally."
)


def plain_prompt(prompt: Prompt, plan: OutputPlan) -> Prompt:
    """``prompt`` with tool definitions, calls and results written as text (see above)."""
    if not prompt.is_chat:
        return prompt
    tooling = any(_has_tool_parts(m) for m in prompt.messages)
    if not tooling and (not plan.functions or plan.choice == "none"):
        return prompt
    messages = [_plain_message(m) for m in prompt.messages]
    if plan.functions and plan.choice != "none":
        messages.insert(0, ChatMessage(role="system", content=_instructions(plan)))
    return replace(prompt, messages=tuple(messages))


def _instructions(plan: OutputPlan) -> str:
    described = [
        {"name": f.name, "description": f.description or "", "parameters": f.parameters or {}}
        for f in plan.functions
    ]
    text = TOOL_PROMPT.format(
        functions="\n".join(json.dumps(d) for d in described), open=OPEN, close=CLOSE
    )
    if plan.forced:
        text += "\nAnswer now with a function call."
    return text


def _has_tool_parts(message: ChatMessage) -> bool:
    return bool(message.tool_calls or message.function_call) or message.role in (
        "tool",
        "function",
    )


def _plain_message(message: ChatMessage) -> ChatMessage:
    if message.role in ("tool", "function"):
        return ChatMessage(
            role="user", content=f"<tool_response>\n{message.text()}\n</tool_response>"
        )
    calls = [c.function for c in message.tool_calls or []]
    if message.function_call is not None:
        calls.append(message.function_call)
    if not calls:
        return message
    written = "".join(
        OPEN + json.dumps({"name": c.name, "arguments": _decoded(c.arguments)}) + CLOSE
        for c in calls
    )
    return ChatMessage(role="assistant", content=message.text() + written)


def _decoded(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


# --------------------------------------------------------------------------------- the output


def shaped(plan: OutputPlan, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """The engine's deltas with tool calls parsed out of the text, as ``plan`` says."""
    if plan.forced:
        return _reshape(CallReader(plan), deltas)
    if plan.choice == "auto":
        return _reshape(AutoReader(plan), deltas)
    return deltas


async def _reshape(
    reader: CallReader | AutoReader, deltas: AsyncIterator[Delta]
) -> AsyncIterator[Delta]:
    async for delta in deltas:
        out = reader.feed(delta.text, delta.tokens)
        if delta.finish_reason is not None:
            out = reader.finish(out, delta)
        if out.text or out.tool_calls or out.finish_reason is not None:
            yield out


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _finish(plan: OutputPlan, called: bool, reason: FinishReason) -> FinishReason:
    if not called or reason != "stop":
        return reason
    return "function_call" if plan.legacy else "tool_calls"


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:')
_TAIL = re.compile(r"\}\s*$")


@dataclass
class CallReader:
    """A constrained call (:func:`call_schema`) streamed as tool-call deltas as it comes."""

    plan: OutputPlan
    buffer: str = ""
    pending: str = ""
    called: bool = False
    arguments_started: bool = False
    tokens: int = 0
    call_id: str = field(default_factory=new_call_id)

    def feed(self, text: str, tokens: int) -> Delta:
        self.tokens += tokens
        if not self.called:
            self.buffer += text
            head = _HEAD.match(self.buffer)
            if head is None:
                return Delta()
            self.called = True
            self.pending = self.buffer[head.end() :]
            return self._out([self._header(json.loads(f'"{head[1]}"')), *self._release()])
        self.pending += text
        return self._out(self._release())

    def _header(self, name: str) -> ToolCallDelta:
        function = FunctionCallDelta(name=name, arguments="")
        return ToolCallDelta(index=0, id=self.call_id, type="function", function=function)

    def _release(self) -> list[ToolCallDelta]:
        """The arguments so far, but for a tail that may be the call object's closing brace
        (and without the whitespace before them)."""
        if not self.arguments_started:
            self.pending = self.pending.lstrip()
            self.arguments_started = bool(self.pending)
        tail = _TAIL.search(self.pending)
        cut = tail.start() if tail else len(self.pending)
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return [_fragment(text)] if text else []

    def _out(self, calls: list[ToolCallDelta]) -> Delta:
        if not calls:
            return Delta()
        tokens, self.tokens = self.tokens, 0
        return Delta(tokens=tokens, tool_calls=calls)

    def finish(self, out: Delta, final: Delta) -> Delta:
        if not self.called:  # nothing like a call came out: the text is the reply
            reason = final.finish_reason or "stop"
            return Delta(
                text=self.buffer, tokens=self.tokens, finish_reason=reason, usage=final.usage
            )
        pending = self.pending if self.arguments_started else self.pending.lstrip()
        rest = pending if final.finish_reason == "length" else _TAIL.sub("", pending)
        calls = (out.tool_calls or []) + ([_fragment(rest)] if rest else [])
        reason = _finish(self.plan, True, final.finish_reason or "stop")
        tokens = out.tokens + self.tokens
        return Delta(
            tokens=tokens, tool_calls=calls or None, finish_reason=reason, usage=final.usage
        )


def _fragment(arguments: str, index: int = 0) -> ToolCallDelta:
    return ToolCallDelta(index=index, function=FunctionCallDelta(arguments=arguments))


@dataclass
class AutoReader:
    """Text that may hold calls (``auto``): text streams until a call may begin, the rest is
    parsed at the end."""

    plan: OutputPlan
    held: str = ""
    capturing: bool = False
    started: bool = False

    def feed(self, text: str, tokens: int) -> Delta:
        if self.capturing:
            self.held += text
            return Delta()
        buffer = self.held + text
        if not self.started and buffer.strip():
            self.started = True
            if buffer.lstrip().startswith("{"):  # perhaps a bare JSON call: wait for the end
                self.capturing, self.held = True, buffer
                return Delta()
        at = buffer.find(OPEN)
        if at >= 0:
            self.capturing, self.held = True, buffer[at:]
            return Delta(text=buffer[:at], tokens=tokens)
        keep = _partial(buffer, OPEN)
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return Delta(text=buffer[: len(buffer) - keep], tokens=tokens)

    def finish(self, out: Delta, final: Delta) -> Delta:
        reason = final.finish_reason or "stop"
        calls, rest = self._calls(self.held) if self.capturing else ([], self.held)
        text = out.text + rest
        return Delta(
            text=text,
            tokens=out.tokens,
            tool_calls=calls or None,
            finish_reason=_finish(self.plan, bool(calls), reason),
            usage=final.usage,
        )

    def _calls(self, text: str) -> tuple[list[ToolCallDelta], str]:
        """The calls in ``text`` (blocks, or one bare JSON call) and the text left over."""
        names = {f.name for f in self.plan.functions}
        if OPEN not in text:
            call = _call(text, names)
            return ([], text) if call is None else (_pieces([call]), "")
        parts = re.split(rf"{re.escape(OPEN)}(.*?)(?:{re.escape(CLOSE)}|$)", text, flags=re.S)
        found = [_call(block, names) for block in parts[1::2]]
        if not found or any(c is None for c in found):
            return [], text
        rest = "".join(parts[0::2]).strip()
        return _pieces([c for c in found if c is not None]), rest


def _call(text: str, names: set[str]) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of a JSON call naming one of ``names``; else None."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        return data["name"], arguments
    return data["name"], json.dumps(arguments)


def _pieces(calls: list[tuple[str, str]]) -> list[ToolCallDelta]:
    """Each call as OpenAI streams it: a head (index, id, type, name), then the arguments."""
    pieces = []
    for index, (name, arguments) in enumerate(calls):
        head = FunctionCallDelta(name=name, arguments="")
        pieces.append(ToolCallDelta(index=index, id=new_call_id(), type="function", function=head))
        pieces.append(_fragment(arguments, index))
    return pieces


def _partial(buffer: str, marker: str) -> int:
    """Length of the longest tail of ``buffer`` that begins ``marker``."""
    for n in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:n]):
            return n
    return 0
