"""Enqueueing jobs and following their replies.

:meth:`Dispatcher.submit` subscribes to the request's reply channel (confirmed) and only then
XADDs the job, so no frame can race the subscription. The returned :class:`Reply` yields the
frames of the attempt being served, ends at the final frame, and turns a missing worker into a
deadline error instead of a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from llmspool.producer.observe import RequestTrace
from llmspool.producer.relay import ReplyRelay
from llmspool.producer.timeline import Timeline
from llmspool.shared import keys
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import DeadlineExceeded, EngineError, LLMSpoolError, ServiceUnavailable
from llmspool.shared.messages import Job, ReplyFrame
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.settings import Settings

log = logging.getLogger(__name__)

#: How long past its deadline a reply may take to arrive (a job finishing right at it).
DEADLINE_GRACE = 2.0

#: Put in a reply's queue when its deadline passes; a real frame is never empty.
_EXPIRED = b""


class Dispatcher:
    """Puts jobs on model streams and hands back their replies."""

    def __init__(
        self,
        redis: Redis,
        relay: ReplyRelay,
        settings: Settings,
        timeline: Timeline | None = None,
    ) -> None:
        self.redis = redis
        self.relay = relay
        self.settings = settings
        self.timeline = timeline

    def deadline(self, model: ModelConfig, timeout: float | None = None) -> float:
        return time.time() + (timeout or model.timeout or self.settings.request_timeout)

    async def submit(self, job: Job, trace: RequestTrace) -> Reply:
        """Enqueue ``job`` and follow its reply; ``trace`` watches it until the reply closes."""
        channel = keys.reply_channel(job.request_id)
        queue = await self.relay.subscribe(channel)
        try:
            fields: Any = job.to_fields()
            await self.redis.xadd(keys.requests_stream(job.model), fields)
        except UNAVAILABLE as exc:
            await self.relay.unsubscribe(channel)
            raise ServiceUnavailable(f"cannot enqueue: redis unavailable ({exc})") from exc
        except BaseException:
            await self.relay.unsubscribe(channel)
            raise
        return Reply(self, job, queue, trace)

    async def cancel(self, request_id: str) -> None:
        """Tell the workers the client went away."""
        try:
            await self.redis.publish(keys.CANCEL_CHANNEL, request_id)
        except UNAVAILABLE as exc:
            log.warning("could not cancel %s: %s", request_id, exc)


class Reply:
    """The frames of one request, in order, from the attempt that serves it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        job: Job,
        queue: asyncio.Queue[bytes],
        trace: RequestTrace,
    ) -> None:
        self._dispatcher = dispatcher
        self.job = job
        self._queue = queue
        self.trace = trace
        self.attempt = 0
        self.finished = False
        self.sent_text = False
        self.worker: str | None = None
        # One timer per request, not one per frame (asyncio.wait_for on every frame cost more
        # than parsing it): at the deadline it wakes the reader with _EXPIRED.
        loop = asyncio.get_running_loop()
        when = loop.time() + job.deadline + DEADLINE_GRACE - time.time()
        self._expiry = loop.call_at(when, queue.put_nowait, _EXPIRED)
        self._frames_seen = 0

    async def frames(self) -> AsyncIterator[ReplyFrame]:
        """Frames of the serving attempt; a retry after text was sent ends in an error."""
        while not self.finished:
            frame = await self._next()
            if frame.attempt < self.attempt:
                continue  # a late frame of an abandoned attempt
            if frame.attempt > self.attempt:
                self._switch_attempt(frame.attempt)
            self.worker = frame.worker or self.worker
            self.finished = frame.final
            self.sent_text = self.sent_text or bool(frame.text)
            self.trace.frame(frame)
            yield frame

    def _switch_attempt(self, attempt: int) -> None:
        if self.sent_text:
            raise self._failed(
                EngineError(
                    "the worker serving this stream failed after sending tokens; the request was "
                    "retried, but its new text cannot be spliced into this stream",
                    code="stream_interrupted",
                )
            )
        self.attempt = attempt

    def _failed(self, exc: LLMSpoolError) -> LLMSpoolError:
        self.trace.fail(exc)
        return exc

    async def collect(self) -> tuple[str, ReplyFrame]:
        """The whole text and the final frame; a retried attempt starts the text again."""
        parts: list[str] = []
        attempt = 0
        async for frame in self.frames_restartable():
            if frame.attempt != attempt:
                parts, attempt = [], frame.attempt
            parts.append(frame.text)
            if frame.final:
                return "".join(parts), frame
        raise self._failed(EngineError("the reply ended without a final frame"))

    async def frames_restartable(self) -> AsyncIterator[ReplyFrame]:
        """Like :meth:`frames`, but a new attempt simply starts over (nothing was sent yet)."""
        while not self.finished:
            frame = await self._next()
            if frame.attempt < self.attempt:
                continue
            self.attempt = frame.attempt
            self.worker = frame.worker or self.worker
            self.finished = frame.final
            self.trace.frame(frame)
            yield frame

    def ready(self) -> bool:
        """Whether a frame is already waiting (the next one comes without waiting)."""
        return not self._queue.empty()

    async def _next(self) -> ReplyFrame:
        data = await self._queue.get()
        if not data:  # _EXPIRED; put back so that every later read fails the same way
            self._queue.put_nowait(_EXPIRED)
            raise self._failed(
                DeadlineExceeded(
                    f"No worker of model '{self.job.model}' served the request before its deadline."
                )
            )
        frame = ReplyFrame.loads(data)
        self._frames_seen += 1
        if self._dispatcher.timeline is not None:
            self._dispatcher.timeline.observe(self.job, frame, first=self._frames_seen == 1)
        return frame

    async def close(self) -> None:
        """Settle the trace; stop following the reply; cancel the job if it did not finish."""
        self._expiry.cancel()
        self.trace.finish()
        await self._dispatcher.relay.unsubscribe(keys.reply_channel(self.job.request_id))
        if not self.finished:
            await self._dispatcher.cancel(self.job.request_id)
