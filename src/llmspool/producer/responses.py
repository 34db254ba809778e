"""Turning reply frames into OpenAI responses: whole objects and SSE chunks.

Every SSE event of a reply carries an ``id:`` line, ``<attempt>.<seq>.<k>``: the ``k``-th event
made from frame ``seq`` of delivery ``attempt`` (the opening event is ``0.0.0``). Events are a
pure function of the frames, which the reply log keeps, so a client that reconnects with
``Last-Event-ID`` gets exactly the events after that one: no gap, no duplicate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson

from llmspool.producer import chunks
from llmspool.producer.dispatch import Reply
from llmspool.shared import replies
from llmspool.shared.errors import InvalidRequest, LLMSpoolError
from llmspool.shared.messages import JobKind, ReplyFrame, ReplyMeta
from llmspool.shared.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    ToolCallDelta,
    Usage,
)

#: Events are built as bytes and written as they are (producer/sse.py).
DONE = b"data: [DONE]\n\n"


EventId = tuple[int, int, int]


def chat_completion(reply: Reply, frames: list[ReplyFrame], final: ReplyFrame) -> ChatCompletion:
    meta = reply.meta
    return replies.chat_completion(
        meta.request_id, int(meta.created), meta.model, frames, final.usage, meta.legacy_functions
    )


def completion(reply: Reply, frames: list[ReplyFrame], final: ReplyFrame) -> Completion:
    meta = reply.meta
    return replies.completion(meta.request_id, int(meta.created), meta.model, frames, final.usage)


class ChunkWriter:
    """Builds the SSE events of one streamed reply (chat or text completion) from the typed
    chunk models: the plain path (choice 0, text only) through their byte templates
    (:mod:`llmspool.producer.chunks`), the rest (other choices, logprobs, tool calls) by
    serialising the models."""

    def __init__(self, meta: ReplyMeta) -> None:
        self.meta = meta
        self.chat = meta.kind is JobKind.CHAT
        self.include_usage = meta.include_usage
        self.n = meta.n
        self.legacy = meta.legacy_functions
        self._offsets: dict[int, int] = {}  # per choice: characters streamed so far
        self._head = chunks.head(meta.request_id, int(meta.created), meta.model)
        self._bound: dict[str, tuple[bytes, bytes]] = {}

    def _fill(self, kind: str, value: bytes = b"") -> bytes:
        bound = self._bound.get(kind)
        if bound is None:
            template = chunks.template(kind, self.include_usage)
            bound = self._bound[kind] = template.bind(self._head)
        return b"data: " + bound[0] + value + bound[1] + b"\n\n"

    def _event(self, choices: list[Any]) -> bytes:
        """A chunk of ``choices`` serialised from its model (usage null where asked for)."""
        head: dict[str, Any] = {"id": self.meta.request_id, "created": int(self.meta.created)}
        extra: dict[str, Any] = {"usage": None} if self.include_usage else {}
        if self.chat:
            model: Any = ChatCompletionChunk.model_construct(
                **head,
                object="chat.completion.chunk",
                model=self.meta.model,
                choices=choices,
                **extra,
            )
        else:
            model = Completion.model_construct(
                **head, object="text_completion", model=self.meta.model, choices=choices, **extra
            )
        return b"data: " + chunks.dump(model) + b"\n\n"

    def _choice(
        self, index: int, delta: ChatDelta | None, text: str, logprobs: Any, finish: Any
    ) -> Any:
        if self.chat:
            return ChatCompletionChunkChoice.model_construct(
                index=index,
                delta=delta or ChatDelta.model_construct(),
                logprobs=logprobs,
                finish_reason=finish,
            )
        return CompletionChoice.model_construct(
            index=index, text=text, logprobs=logprobs, finish_reason=finish
        )

    def opening(self) -> bytes | None:
        """Chat streams open with the assistant role (of every choice), as OpenAI's do."""
        if not self.chat:
            return None
        if self.n == 1:
            return self._fill("role")
        role = ChatDelta.model_construct(role="assistant", content="")
        return self._event([self._choice(i, role, "", None, None) for i in range(self.n)])

    def frame(self, frame: ReplyFrame) -> list[bytes]:
        events = []
        index = frame.index or 0
        plain = index == 0 and not frame.logprobs
        if frame.text or frame.logprobs:
            if plain:
                kind = "content" if self.chat else "text"
                events.append(self._fill(kind, orjson.dumps(frame.text)))
            else:
                delta = ChatDelta.model_construct(content=frame.text)
                logprobs = self._logprobs(frame, index) if frame.logprobs else None
                events.append(self._event([self._choice(index, delta, frame.text, logprobs, None)]))
        if frame.tool_calls and self.chat:
            delta = self._calls_delta(frame.tool_calls)
            events.append(self._event([self._choice(index, delta, "", None, None)]))
        if frame.finish_reason is not None:
            events.append(self._finish(frame, index))
            if self.include_usage and not frame.more:
                usage = chunks.dump(frame.usage or Usage())
                events.append(self._fill("usage" if self.chat else "text-usage", usage))
        return events

    def _finish(self, frame: ReplyFrame, index: int) -> bytes:
        if index == 0:
            finish = orjson.dumps(frame.finish_reason)
            return self._fill("finish" if self.chat else "text-finish", finish)
        return self._event([self._choice(index, None, "", None, frame.finish_reason)])

    def _calls_delta(self, pieces: list[ToolCallDelta]) -> ChatDelta:
        if self.legacy:  # the legacy functions: one call, streamed as function_call
            return ChatDelta(function_call=pieces[0].function)
        return ChatDelta(tool_calls=pieces)

    def _logprobs(self, frame: ReplyFrame, index: int) -> Any:
        """A chunk's logprobs: chat's ``content`` list, or the completions shape, whose text
        offsets run on from the choice's earlier chunks."""
        tokens = frame.logprobs or []
        # validated from plain data, so every field counts as given (chunks omit unset ones)
        if self.chat:
            content = [token.model_dump() for token in tokens]
            return ChoiceLogprobs.model_validate({"content": content, "refusal": None})
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + len(frame.text)
        legacy = replies.completion_logprobs(tokens, offset)
        return CompletionLogprobs.model_validate(legacy.model_dump())


def event(body: object) -> bytes:
    """One SSE ``data:`` event (orjson never writes a newline, so one line is enough)."""
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _with_id(event_id: str, data: bytes) -> bytes:
    return b"id: " + event_id.encode() + b"\n" + data


async def sse_events(
    reply: Reply, writer: ChunkWriter, after: EventId | None = None
) -> AsyncIterator[bytes]:
    """The SSE events of a reply, each with its id, skipping those up to ``after``; errors
    become an error event, then the stream ends. Frames that are already waiting leave in one
    write. Leaving early (client gone) cancels the job when this process enqueued it."""
    after = after or (-1, 0, 0)
    pending: list[bytes] = []
    try:
        opening = writer.opening()
        if opening is not None and after < (0, 0, 0):
            yield _with_id("0.0.0", opening)
        async for frame in reply.frames():
            if frame.error is not None:
                raise frame.error.to_exception()
            for k, data in enumerate(writer.frame(frame)):
                if (frame.attempt, frame.seq, k) > after:
                    pending.append(_with_id(f"{frame.attempt}.{frame.seq}.{k}", data))
            if pending and not reply.ready():
                yield b"".join(pending)
                pending = []
        yield b"".join(pending) + DONE
    except LLMSpoolError as exc:
        yield b"".join(pending) + event(exc.to_dict())
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await reply.close()


def parse_event_id(text: str | None) -> EventId | None:
    """A ``Last-Event-ID`` as sent by :func:`sse_events`."""
    if not text:
        return None
    try:
        attempt, seq, k = (int(part) for part in text.split("."))
    except ValueError:
        raise InvalidRequest(
            f"Last-Event-ID '{text}' is not an event id of this API.", param="Last-Event-ID"
        ) from None
    return attempt, seq, k
