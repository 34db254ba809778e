"""A lean ``text/event-stream`` response: SSE bytes written straight to the ASGI server.

The events are already framed (:mod:`llmspool.producer.responses` builds them as bytes), so the
response only has to write them. sse-starlette, which this replaces, starts a task group of four
tasks per stream (sender, pinger, exit-signal listener, disconnect listener) and opens a cancel
scope around every send; on this path that was a large part of the API's CPU per request (see
bench/notes.md). Here the events are written by the request's own task, and one watcher task
per stream waits for the client to go away and writes a keep-alive comment when the stream has
been silent for ``ping`` seconds.

A client that disconnects stops the stream: the watcher cancels the writing task, whose event
iterator is then closed (its ``finally`` cancels the job). On shutdown uvicorn lets open streams
finish for its graceful-shutdown timeout (see :func:`llmspool.control.runner.run_api`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

#: A comment line, without the blank line that ends an event: the openai client's decoder
#: makes an event of every blank line once an ``id:`` was seen (our events carry ids), and an
#: event with no data is a JSON error there. A lone comment line is ignored by every client.
PING = b": ping\n"
#: Default seconds of silence after which a keep-alive comment is written (as sse-starlette).
PING_SECONDS = 15.0

_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


class EventStream(StreamingResponse):
    """Streams ``events`` (complete SSE events, as bytes) to the client."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        ping: float = PING_SECONDS,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(events, headers={**_HEADERS, **(headers or {})}, background=background)
        self._events = events
        self._ping = ping
        self._last_write = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self._last_write = loop.time()
        watcher = loop.create_task(self._watch(receive, send, task, gone))
        try:
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_write = loop.time()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.is_set():
                raise  # not ours: shutdown, or the server cancelled the request
            task.uncancel()
        finally:
            watcher.cancel()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.background is not None and not gone.is_set():
            await self.background()

    async def _watch(
        self, receive: Receive, send: Send, writer: asyncio.Task[None], gone: asyncio.Event
    ) -> None:
        """Until the client disconnects (then cancel ``writer``), ping a silent stream."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self._last_write + self._ping - loop.time()
            if wait <= 0:
                await send({"type": "http.response.body", "body": PING, "more_body": True})
                self._last_write = loop.time()
                continue
            message = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    message = await receive()
            if message is not None and message["type"] == "http.disconnect":
                gone.set()
                writer.cancel()
                return
