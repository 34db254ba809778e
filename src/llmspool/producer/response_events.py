"""A chat reply as a Responses API response: the whole object, or its typed stream events.

:class:`ResponseWriter` is fed the chat reply piece by piece (text deltas, tool-call deltas in
the chat shape, the finish reason and usage) and keeps the response object up to date; every
step also returns the SSE events OpenAI streams for it (``event: <type>`` and ``data:``, each
with its ``sequence_number``): ``response.created`` and ``response.in_progress`` first, then
per output item ``response.output_item.added``, its content part or argument deltas, their
``.done`` events and ``response.output_item.done``, and last ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut it, ``response.failed`` on an error).
A non-streamed response is built the same way, its events dropped.
"""

from __future__ import annotations

import uuid
from typing import Any

from llmspool.shared.errors import LLMSpoolError
from llmspool.shared.protocol import Usage
from llmspool.shared.responses_api import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    IncompleteDetails,
    OutputFunctionCall,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    Response,
    ResponseError,
    ResponseLifecycleEvent,
    ResponseUsage,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)

#: How a chat finish reason ends a response: its status, and why it is incomplete.
_ENDINGS: dict[str, tuple[str, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "function_call": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


class ResponseWriter:
    """Builds one response from its chat reply; each step returns its SSE events."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self._seq = 0
        #: the item being streamed; items are streamed one after the other, as OpenAI does
        self._open: OutputMessage | OutputFunctionCall | None = None
        #: the chat tool-call index → its output item
        self._calls: dict[int, OutputFunctionCall] = {}

    # ------------------------------------------------------------------ events

    def _event(self, event: StreamEvent) -> bytes:
        return (
            b"event: "
            + event.type.encode()
            + b"\ndata: "
            + event.model_dump_json().encode()
            + b"\n\n"
        )

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _lifecycle(self, kind: str) -> bytes:
        event = ResponseLifecycleEvent(
            type=kind, sequence_number=self._next(), response=self.response
        )
        return self._event(event)

    def _item(self, kind: str, item: OutputMessage | OutputFunctionCall) -> bytes:
        index = self.response.output.index(item)
        event = OutputItemEvent(
            type=kind, sequence_number=self._next(), output_index=index, item=item
        )
        return self._event(event)

    # ------------------------------------------------------------------ steps

    def opening(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def text(self, delta: str) -> list[bytes]:
        """Text of the assistant's message (opened on its first text)."""
        message = self._open
        events = []
        if not isinstance(message, OutputMessage):
            message = OutputMessage(id=f"msg_{uuid.uuid4().hex}", status="in_progress", content=[])
            events = self._open_item(message)
        part = message.content[0]
        part.text += delta
        index = self.response.output.index(message)
        event = TextDeltaEvent(
            sequence_number=self._next(), item_id=message.id, output_index=index, delta=delta
        )
        return [*events, self._event(event)]

    def _open_item(self, item: OutputMessage | OutputFunctionCall) -> list[bytes]:
        """Close the open item, then add ``item`` (a message with its text part)."""
        events = self._close("completed")
        self._open = item
        self.response.output.append(item)
        if isinstance(item, OutputFunctionCall):
            return [*events, self._item("response.output_item.added", item)]
        return [*events, *self._open_message(item)]

    def _open_message(self, message: OutputMessage) -> list[bytes]:
        added = self._item("response.output_item.added", message)
        message.content.append(OutputText(text=""))
        part = ContentPartEvent(
            type="response.content_part.added",
            sequence_number=self._next(),
            item_id=message.id,
            output_index=self.response.output.index(message),
            part=message.content[0],
        )
        return [added, self._event(part)]

    def tool_call(self, delta: dict[str, Any]) -> list[bytes]:
        """One streamed chat tool-call delta (``index``, ``id`` and ``function.name`` first,
        ``function.arguments`` fragments after), or a whole tool call."""
        index = int(delta.get("index", len(self._calls)))
        function = delta.get("function") or {}
        events = []
        call = self._calls.get(index)
        if call is None:
            call = OutputFunctionCall(
                id=f"fc_{uuid.uuid4().hex}",
                call_id=str(delta.get("id") or f"call_{uuid.uuid4().hex}"),
                name=str(function.get("name") or ""),
                arguments="",
                status="in_progress",
            )
            self._calls[index] = call
            events += self._open_item(call)
        fragment = str(function.get("arguments") or "")
        if fragment:
            call.arguments += fragment
            event = ArgumentsDeltaEvent(
                sequence_number=self._next(),
                item_id=call.id,
                output_index=self.response.output.index(call),
                delta=fragment,
            )
            events.append(self._event(event))
        return events

    def finish(self, finish_reason: str | None, usage: Usage | None) -> list[bytes]:
        """Close the open items and end the response (completed, or incomplete)."""
        status, reason = _ENDINGS.get(finish_reason or "stop", ("completed", None))
        item_status = "completed" if status == "completed" else "incomplete"
        events = self._close(item_status)
        self.response.status = status  # type: ignore[assignment]
        if reason is not None:
            self.response.incomplete_details = IncompleteDetails(reason=reason)  # type: ignore[arg-type]
        if usage is not None:
            self.response.usage = response_usage(usage)
        return [*events, self._lifecycle(f"response.{status}")]

    def _close(self, status: str) -> list[bytes]:
        """The ``.done`` events of the open item, if any."""
        item, self._open = self._open, None
        if item is None:
            return []
        if isinstance(item, OutputFunctionCall):
            return self._close_call(item, status)
        return self._close_message(item, status)

    def _close_message(self, message: OutputMessage, status: str) -> list[bytes]:
        index = self.response.output.index(message)
        part = message.content[0]
        done = TextDoneEvent(
            sequence_number=self._next(), item_id=message.id, output_index=index, text=part.text
        )
        part_done = ContentPartEvent(
            type="response.content_part.done",
            sequence_number=self._next(),
            item_id=message.id,
            output_index=index,
            part=part,
        )
        message.status = status  # type: ignore[assignment]
        return [
            self._event(done),
            self._event(part_done),
            self._item("response.output_item.done", message),
        ]

    def _close_call(self, call: OutputFunctionCall, status: str) -> list[bytes]:
        done = ArgumentsDoneEvent(
            sequence_number=self._next(),
            item_id=call.id,
            output_index=self.response.output.index(call),
            name=call.name,
            arguments=call.arguments,
        )
        call.status = status  # type: ignore[assignment]
        return [self._event(done), self._item("response.output_item.done", call)]

    def fail(self, error: LLMSpoolError) -> list[bytes]:
        """End the response as failed (``response.failed``), naming the error."""
        self.response.status = "failed"
        self.response.error = ResponseError(
            code=error.code or "server_error", message=error.message
        )
        return [self._lifecycle("response.failed")]


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
