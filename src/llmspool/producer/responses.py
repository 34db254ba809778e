"""Turning reply frames into OpenAI responses: whole objects and SSE chunks.

Every SSE event of a reply carries an ``id:`` line, ``<attempt>.<seq>.<k>``: the ``k``-th event
made from frame ``seq`` of delivery ``attempt`` (the opening event is ``0.0.0``). Events are a
pure function of the frames, which the reply log keeps, so a client that reconnects with
``Last-Event-ID`` gets exactly the events after that one: no gap, no duplicate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import orjson

from llmspool.producer.dispatch import Reply
from llmspool.shared import replies
from llmspool.shared.errors import InvalidRequest, LLMSpoolError
from llmspool.shared.messages import JobKind, ReplyFrame, ReplyMeta
from llmspool.shared.protocol import ChatCompletion, Completion, Usage

#: Events are built as bytes and written as they are (producer/sse.py).
DONE = b"data: [DONE]\n\n"


EventId = tuple[int, int, int]


def chat_completion(reply: Reply, frames: list[ReplyFrame], final: ReplyFrame) -> ChatCompletion:
    meta = reply.meta
    return replies.chat_completion(
        meta.request_id, int(meta.created), meta.model, frames, final.usage
    )


def completion(reply: Reply, frames: list[ReplyFrame], final: ReplyFrame) -> Completion:
    meta = reply.meta
    return replies.completion(meta.request_id, int(meta.created), meta.model, frames, final.usage)


class ChunkWriter:
    """Builds the SSE events of one streamed reply (chat or text completion)."""

    def __init__(self, meta: ReplyMeta) -> None:
        self.chat = meta.kind is JobKind.CHAT
        self.include_usage = meta.include_usage
        self.n = meta.n
        self._offsets: dict[int, int] = {}  # per choice: characters streamed so far
        self._head = {
            "id": meta.request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(meta.created),
            "model": meta.model,
        }

    def _event(self, choices: list[dict[str, object]], usage: Usage | None = None) -> bytes:
        body: dict[str, object] = {**self._head, "choices": choices}
        if self.include_usage:
            body["usage"] = usage.model_dump() if usage is not None else None
        return event(body)

    def _choice(
        self,
        text: str | None,
        finish: str | None,
        role: bool = False,
        index: int = 0,
        logprobs: object = None,
    ) -> dict[str, object]:
        if not self.chat:
            return {
                "index": index,
                "text": text or "",
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        delta: dict[str, object] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def opening(self) -> bytes | None:
        """Chat streams open with the assistant role (of every choice), as OpenAI's do."""
        if not self.chat:
            return None
        return self._event([self._choice("", None, True, i) for i in range(self.n)])

    def frame(self, frame: ReplyFrame) -> list[bytes]:
        events = []
        index = frame.index or 0
        if frame.text or frame.logprobs:
            logprobs = self._logprobs(frame, index) if frame.logprobs else None
            events.append(self._event([self._choice(frame.text, None, False, index, logprobs)]))
        if frame.finish_reason is not None:
            events.append(
                self._event(
                    [self._choice(None if self.chat else "", frame.finish_reason, False, index)]
                )
            )
            if self.include_usage and not frame.more:
                events.append(self._event([], frame.usage or Usage()))
        return events

    def _logprobs(self, frame: ReplyFrame, index: int) -> dict[str, object]:
        """A chunk's logprobs: chat's ``content`` list, or the completions shape, whose text
        offsets run on from the choice's earlier chunks."""
        tokens = frame.logprobs or []
        if self.chat:
            return {"content": [token.model_dump() for token in tokens], "refusal": None}
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + len(frame.text)
        return replies.completion_logprobs(tokens, offset).model_dump()


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


def now() -> int:
    return int(time.time())
