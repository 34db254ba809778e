"""Streamed chunks as bytes, made from the typed chunk models at the cost of a byte join.

Every chunk of a stream has the same shape; only the request's id, time and model, and the
new text (or the finish reason) change. A :class:`Template` is one chunk of that shape, built
and validated once from the typed models of :mod:`llmspool.shared.protocol` with marks where
those values go, and serialised with pydantic; filling it in is byte concatenation with the
values encoded by orjson. So the JSON a client reads is the typed model's (field order, nulls),
while a token costs what a hand-built dict cost before (bench/notes.md: the relay is hot).
Rare chunks (tool calls) are serialised from their models each time (:func:`dump`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson
from pydantic import BaseModel

from llmspool.shared.protocol import (
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatDelta,
    Completion,
    CompletionChoice,
    Usage,
)

#: Marks of the slots (model_construct: the marks are not valid values); a time no request has.
ID, MODEL, VALUE, CREATED = "\x00id\x00", "\x00model\x00", "\x00value\x00", 1 << 52
_SLOT = re.compile(rb'"\\u0000(id|model|value)\\u0000"|' + str(CREATED).encode())
#: A Usage in a template is the slot ``value`` (usage objects are dumped when filled).
_USAGE_MARK = Usage(prompt_tokens=CREATED, completion_tokens=CREATED, total_tokens=CREATED)


def dump(model: BaseModel) -> bytes:
    """A model's JSON, with the fields that were given (nulls included), as OpenAI writes."""
    return type(model).__pydantic_serializer__.to_json(model, exclude_unset=True)


class Template:
    """One chunk's JSON split at its slots."""

    def __init__(self, model: BaseModel) -> None:
        raw = dump(model).replace(dump(_USAGE_MARK), b'"\\u0000value\\u0000"')
        self.parts: list[bytes] = []
        self.slots: list[str] = []
        end = 0
        for match in _SLOT.finditer(raw):
            self.parts.append(raw[end : match.start()])
            self.slots.append(match[1].decode() if match[1] else "created")
            end = match.end()
        self.parts.append(raw[end:])

    def bind(self, head: dict[str, bytes]) -> tuple[bytes, bytes]:
        """The chunk for one stream, as the bytes before and after its ``value`` slot."""
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out.append(b"\x00" if slot == "value" else head[slot])
            out.append(part)
        before, _, after = b"".join(out).partition(b"\x00")
        return before, after


@functools.cache
def template(kind: str, usage: bool) -> Template:
    """The template of a chunk kind: ``content``, ``role`` or ``finish`` of a chat stream,
    ``text`` or ``text-finish`` of a completion stream, ``usage`` of either."""
    return Template(_model(kind, usage))


def _model(kind: str, usage: bool) -> BaseModel:
    extra: dict[str, Any] = {"usage": None} if usage else {}
    if kind == "usage":
        return _chunk([], {"usage": _USAGE_MARK})
    if kind == "text-usage":
        return _completion([], {"usage": _USAGE_MARK})
    if kind in ("text", "text-finish"):
        finish = VALUE if kind == "text-finish" else None
        text = "" if finish else VALUE
        text_choice = CompletionChoice.model_construct(
            index=0, text=text, logprobs=None, finish_reason=finish
        )
        return _completion([text_choice], extra)
    delta = {
        "content": ChatDelta.model_construct(content=VALUE),
        "role": ChatDelta.model_construct(role="assistant", content=""),
        "finish": ChatDelta.model_construct(),
    }[kind]
    finish = VALUE if kind == "finish" else None
    choice = ChatCompletionChunkChoice.model_construct(
        index=0, delta=delta, logprobs=None, finish_reason=finish
    )
    return _chunk([choice], extra)


def _chunk(choices: list[Any], extra: dict[str, Any]) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_construct(
        id=ID,
        object="chat.completion.chunk",
        created=CREATED,
        model=MODEL,
        choices=choices,
        **extra,
    )


def _completion(choices: list[Any], extra: dict[str, Any]) -> Completion:
    return Completion.model_construct(
        id=ID, object="text_completion", created=CREATED, model=MODEL, choices=choices, **extra
    )


def head(request_id: str, created: int, model: str) -> dict[str, bytes]:
    """A stream's values for the head slots."""
    return {
        "id": orjson.dumps(request_id),
        "created": str(created).encode(),
        "model": orjson.dumps(model),
    }
