"""Turning reply frames into OpenAI responses: whole objects and SSE chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson

from llmspool.producer.dispatch import Reply
from llmspool.shared.errors import LLMSpoolError
from llmspool.shared.messages import ReplyFrame
from llmspool.shared.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionMessage,
    Completion,
    CompletionChoice,
    Usage,
)

#: Events are written as bytes: sse-starlette passes bytes through without re-encoding them.
DONE = b"data: [DONE]\n\n"


def chat_completion(reply: Reply, text: str, final: ReplyFrame) -> ChatCompletion:
    return ChatCompletion(
        id=reply.job.request_id,
        created=int(reply.job.enqueued_at),
        model=reply.job.model,
        choices=[
            ChatCompletionChoice(
                message=ChatCompletionMessage(content=text), finish_reason=final.finish_reason
            )
        ],
        usage=final.usage or Usage(),
    )


def completion(reply: Reply, text: str, final: ReplyFrame) -> Completion:
    return Completion(
        id=reply.job.request_id,
        created=int(reply.job.enqueued_at),
        model=reply.job.model,
        choices=[CompletionChoice(text=text, finish_reason=final.finish_reason)],
        usage=final.usage or Usage(),
    )


class ChunkWriter:
    """Builds the SSE events of one streamed reply (chat or text completion)."""

    def __init__(self, reply: Reply, *, chat: bool, include_usage: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self._head = {
            "id": reply.job.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(reply.job.enqueued_at),
            "model": reply.job.model,
        }

    def _event(self, choices: list[dict[str, object]], usage: Usage | None = None) -> bytes:
        body: dict[str, object] = {**self._head, "choices": choices}
        if self.include_usage:
            body["usage"] = usage.model_dump() if usage is not None else None
        return event(body)

    def _choice(
        self, text: str | None, finish: str | None, role: bool = False
    ) -> dict[str, object]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, object] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(self) -> bytes | None:
        """Chat streams open with the assistant role, as OpenAI's do."""
        return self._event([self._choice("", None, role=True)]) if self.chat else None

    def frame(self, frame: ReplyFrame) -> list[bytes]:
        events = []
        if frame.text:
            events.append(self._event([self._choice(frame.text, None)]))
        if frame.finish_reason is not None:
            events.append(
                self._event([self._choice(None if self.chat else "", frame.finish_reason)])
            )
            if self.include_usage:
                events.append(self._event([], frame.usage or Usage()))
        return events


def event(body: object) -> bytes:
    """One SSE ``data:`` event (orjson never writes a newline, so one line is enough)."""
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def sse_events(reply: Reply, writer: ChunkWriter) -> AsyncIterator[bytes]:
    """The SSE events of a streamed reply; errors become an error event, then the stream ends.
    Frames that are already waiting leave in one write. Leaving early (client gone) cancels
    the job."""
    pending: list[bytes] = []
    try:
        opening = writer.opening()
        if opening is not None:
            yield opening
        async for frame in reply.frames():
            if frame.error is not None:
                raise frame.error.to_exception()
            pending += writer.frame(frame)
            if not reply.ready():
                yield b"".join(pending)
                pending = []
        yield b"".join(pending) + DONE
    except LLMSpoolError as exc:
        yield b"".join(pending) + event(exc.to_dict())
    finally:
        await reply.close()


def now() -> int:
    return int(time.time())
