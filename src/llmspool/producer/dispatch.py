"""Enqueueing jobs and following their replies.

:meth:`Dispatcher.submit` refuses work past the model's queue limit (429), subscribes to the
request's reply channel (confirmed), and only then writes the reply log's first entry (the
:class:`~llmspool.shared.messages.ReplyMeta`) and XADDs the job, in one round trip.

A :class:`Reply` yields the frames of the attempt being served, in order, each exactly once.
Frames arrive over pub/sub; the reply log (the same frames, appended just before each PUBLISH)
fills whatever pub/sub lost: a gap in an attempt's sequence numbers, or silence longer than
``reply_poll`` (a Redis restart drops in-flight messages). :meth:`Dispatcher.follow` builds a
Reply from the log alone, so any API process can resume a stream or finish a reply that another
one started. A missing worker becomes a deadline error instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis

from llmspool.producer.observe import RequestTrace
from llmspool.producer.relay import ReplyRelay
from llmspool.producer.timeline import Timeline
from llmspool.shared import keys, tenants
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    DeadlineExceeded,
    EngineError,
    IdempotencyConflict,
    LLMSpoolError,
    QueueFull,
    RequestNotFound,
    ServiceUnavailable,
    StreamInterrupted,
)
from llmspool.shared.messages import Job, ReplyFrame, ReplyMeta
from llmspool.shared.protocol import Usage
from llmspool.shared.redis import UNAVAILABLE, publish
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
        self._cancelling: set[asyncio.Task[None]] = set()

    def deadline(self, model: ModelConfig, timeout: float | None = None) -> float:
        return time.time() + (timeout or model.timeout or self.settings.request_timeout)

    async def submit(
        self,
        job: Job,
        model: ModelConfig,
        trace: RequestTrace,
        idempotency_key: str | None = None,
        weight: float = 1.0,
    ) -> Reply:
        """Enqueue ``job`` in its tenant's queue (``weight``: the tenant's share of the turns)
        and return its reply (subscribed before the job exists); ``trace`` watches it until the
        reply closes. Raises :class:`QueueFull` when the model already has its limit of jobs
        waiting or running and the tenant its share of them (checked and enqueued in one
        script, see :mod:`llmspool.shared.tenants`)."""
        meta = ReplyMeta.of(job)
        channel = keys.reply_channel(job.request_id)
        # Not waiting for Redis to confirm: the SUBSCRIBE is written before the XADD, and the
        # first PUBLISH can only follow the XADD (a worker reads the job first). Should a frame
        # be missed anyway, the reply log has it (see Reply._next and Reply._tick).
        queue = await self.relay.subscribe(channel, confirm=False)
        try:
            limit = model.queue_limit or self.settings.queue_limit
            await self._enqueue(job, meta, limit, weight)
        except UNAVAILABLE as exc:
            await self._abandon(channel, idempotency_key)
            raise ServiceUnavailable(f"cannot enqueue: redis unavailable ({exc})") from exc
        except BaseException:
            await self._abandon(channel, idempotency_key)
            raise
        reply = Reply(self, meta, queue, trace=trace, job=job)
        reply.idempotency_key = idempotency_key
        return reply

    async def _enqueue(self, job: Job, meta: ReplyMeta, limit: int, weight: float) -> None:
        log_key = keys.reply_log(job.request_id)
        stream = keys.requests_stream(job.model)
        tenant = _tenant(job)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(log_key, {"m": meta.dumps()})
        pipe.expire(log_key, self.settings.replylog_ttl + int(job.deadline - time.time()))
        # EVAL, not EVALSHA: it works the same in a pipeline and on a cluster, and Redis
        # caches the compiled script by its hash
        command = tenants.enqueue_command(stream, tenant, weight, limit, job.to_fields())
        pipe.eval(tenants.ENQUEUE, *command)
        *_, (added, depth) = await pipe.execute()
        if not added:
            with contextlib.suppress(*UNAVAILABLE):
                await self.redis.delete(log_key)
            raise QueueFull(
                f"The queue of model '{job.model}' is full ({depth} requests waiting or "
                f"running, limit {limit}) and this API key holds its share of it; retry later.",
                retry_after=1,
            )

    async def _abandon(self, channel: str, idempotency_key: str | None) -> None:
        await self.relay.unsubscribe(channel)
        if idempotency_key is not None:
            await self.forget(idempotency_key)

    async def follow(self, request_id: str, owner: str | None = None) -> Reply:
        """The reply of a request some API process already enqueued, from its first frame;
        with ``owner``, only if that tenant made it (else it is not found)."""
        queue = await self.relay.subscribe(keys.reply_channel(request_id))
        try:
            cursor, meta, frames = await read_log(self.redis, request_id, "0-0")
        except BaseException:
            await self.relay.unsubscribe(keys.reply_channel(request_id))
            raise
        if meta is None or (owner is not None and meta.owner != owner):
            await self.relay.unsubscribe(keys.reply_channel(request_id))
            raise RequestNotFound(request_id)
        reply = Reply(self, meta, queue)
        reply.load(cursor, [ReplyFrame.loads(data) for data in frames])
        return reply

    async def remember(self, key: str, job: Job) -> str | None:
        """Bind an Idempotency-Key (``key``: its Redis name, :func:`keys.idempotency`) to
        ``job``; if it was bound before, the first request's id (after checking that it was
        the same request)."""
        digest = hashlib.sha256(job.body.model_dump_json(exclude_unset=True).encode()).hexdigest()
        value = orjson.dumps({"request_id": job.request_id, "body": digest})
        name = key
        if await self.redis.set(name, value, nx=True, ex=self.settings.idempotency_ttl):
            return None
        raw = await self.redis.get(name)
        if raw is None:  # expired between the two commands: this request is the first now
            return await self.remember(key, job)
        first = orjson.loads(raw)
        if first["body"] != digest:
            raise IdempotencyConflict()
        return str(first["request_id"])

    async def forget(self, key: str) -> None:
        try:
            await self.redis.delete(key)
        except UNAVAILABLE as exc:
            log.warning("could not forget an idempotency key: %s", exc)

    async def keep(self, request_id: str, key: str) -> None:
        """Keep a finished reply's log, and its Idempotency-Key, for ``idempotency_ttl``: a
        repeat gets the first reply however long the reply log alone would have lived."""
        ttl = self.settings.idempotency_ttl
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.expire(keys.reply_log(request_id), ttl)
            pipe.expire(key, ttl)
            await pipe.execute()
        except UNAVAILABLE as exc:
            log.warning("could not keep the reply of %s: %s", request_id, exc)

    def cancel_later(self, request_id: str, model: str, idempotency_key: str | None) -> None:
        """Cancel a request of ``model`` whose client went away, after ``cancel_grace``
        seconds, unless some API process follows its reply again by then (a resumed stream, a
        repeat)."""
        task = asyncio.create_task(self._cancel_unless_followed(request_id, model, idempotency_key))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel_unless_followed(
        self, request_id: str, model: str, idempotency_key: str | None
    ) -> None:
        await asyncio.sleep(self.settings.cancel_grace)
        try:
            followers: Any = await self.redis.pubsub_numsub(keys.reply_channel(request_id))
        except UNAVAILABLE:
            followers = []
        if followers and int(followers[0][1]) > 0:
            return
        await self.cancel(request_id, model)
        if idempotency_key is not None:
            await self.forget(idempotency_key)

    async def cancel(self, request_id: str, model: str) -> None:
        """Tell ``model``'s workers the client went away."""
        try:
            await publish(self.redis, keys.cancel_channel(model), request_id)
        except UNAVAILABLE as exc:
            log.warning("could not cancel %s: %s", request_id, exc)


async def read_log(
    redis: Redis, request_id: str, cursor: str
) -> tuple[str, ReplyMeta | None, list[bytes]]:
    """Entries of a reply log after ``cursor``: the new cursor, the meta (if read), frames."""
    entries: Any = await redis.xrange(keys.reply_log(request_id), min=f"({cursor}")
    meta, frames = None, []
    for entry_id, fields in entries:
        cursor = _text(entry_id)
        if b"f" in fields:
            frames.append(fields[b"f"])
        elif b"m" in fields:
            meta = ReplyMeta.model_validate_json(fields[b"m"])
    return cursor, meta, frames


class Reply:
    """The frames of one request, in order, each once, from the attempt that serves it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        meta: ReplyMeta,
        queue: asyncio.Queue[bytes],
        *,
        trace: RequestTrace | None = None,
        job: Job | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self.meta = meta
        self._queue = queue
        #: metrics and request log: only for the reply of a request enqueued here
        self.trace = trace
        self.job = job
        #: whether this reply's request was enqueued here (only the owner cancels it)
        self.owner = job is not None
        self.idempotency_key: str | None = None
        self.attempt = 0
        self.finished = False
        self.sent_text = False
        self.worker: str | None = None
        self._seen: dict[int, int] = {}  # attempt -> last seq yielded
        self._backlog: deque[ReplyFrame] = deque()
        self._cursor = "0-0"
        self._frames_seen = 0
        # One deadline timer and one poll timer per request, not a timeout per frame
        # (asyncio.wait_for on every frame cost more than parsing it).
        self._loop = asyncio.get_running_loop()
        when = self._loop.time() + meta.deadline + DEADLINE_GRACE - time.time()
        self._expiry = self._loop.call_at(when, queue.put_nowait, _EXPIRED)
        self._heard = False
        #: the final frame's usage, once it has arrived
        self.usage: Usage | None = None
        self._polling: asyncio.Task[None] | None = None
        self._poller = self._loop.call_later(dispatcher.settings.reply_poll, self._tick)

    @property
    def request_id(self) -> str:
        return self.meta.request_id

    def load(self, cursor: str, frames: list[ReplyFrame]) -> None:
        """Queue frames read from the reply log ahead of live ones."""
        self._cursor = cursor
        self._backlog.extend(frames)

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
            self.sent_text = self.sent_text or bool(frame.text) or bool(frame.tool_calls)
            self._observe(frame)
            self.usage = frame.usage or self.usage
            yield frame

    def _switch_attempt(self, attempt: int) -> None:
        if self.sent_text:
            raise self._failed(
                StreamInterrupted(
                    "the worker serving this stream failed after sending tokens; the request "
                    "was retried, but its new text cannot be spliced into this stream"
                )
            )
        self.attempt = attempt

    def _observe(self, frame: ReplyFrame) -> None:
        if self.trace is not None:
            self.trace.frame(frame)

    def _failed(self, exc: LLMSpoolError) -> LLMSpoolError:
        if self.trace is not None:
            self.trace.fail(exc)
        return exc

    async def collect(self) -> tuple[str, ReplyFrame]:
        """The whole text and the final frame; a retried attempt starts the text again."""
        frames = await self.collect_frames()
        return "".join(frame.text for frame in frames), frames[-1]

    async def collect_frames(self) -> list[ReplyFrame]:
        """The frames of the attempt that finished, the final one last; a retried attempt
        starts over."""
        frames: list[ReplyFrame] = []
        attempt = 0
        async for frame in self.frames_restartable():
            if frame.attempt != attempt:
                frames, attempt = [], frame.attempt
            frames.append(frame)
            if frame.final:
                return frames
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
            self._observe(frame)
            self.usage = frame.usage or self.usage
            yield frame

    async def _next(self) -> ReplyFrame:
        """The next frame not yet yielded, with no gap within its attempt."""
        gap_checked = False
        while True:
            frame = self._backlog.popleft() if self._backlog else await self._receive()
            last = self._seen.get(frame.attempt, 0)
            if frame.seq == last + 1:
                self._seen[frame.attempt] = frame.seq
                self._count(frame)
                return frame
            if frame.seq <= last:
                continue  # already yielded (live and from the log)
            if gap_checked:
                raise self._failed(
                    StreamInterrupted(
                        "frames of this reply were lost (its reply log expired or Redis lost it)",
                        code="reply_lost",
                    )
                )
            gap_checked = await self._catch_up()
            self._backlog.append(frame)

    def _count(self, frame: ReplyFrame) -> None:
        self._frames_seen += 1
        timeline = self._dispatcher.timeline
        if timeline is not None and self.job is not None:
            timeline.observe(self.job, frame, first=self._frames_seen == 1)

    def ready(self) -> bool:
        """Whether a frame is already waiting (the next one comes without waiting)."""
        return bool(self._backlog) or not self._queue.empty()

    async def _receive(self) -> ReplyFrame:
        data = await self._queue.get()
        if not data:  # _EXPIRED; put back so that every later read fails the same way
            self._queue.put_nowait(_EXPIRED)
            raise self._failed(
                DeadlineExceeded(
                    f"No worker of model '{self.meta.model}' served the request before its "
                    "deadline."
                )
            )
        self._heard = True
        return ReplyFrame.loads(data)

    def _tick(self) -> None:
        """Every ``reply_poll``: with no frame since the last tick, read the reply log in the
        background; what pub/sub lost (a Redis restart) arrives through the queue."""
        if not self._heard and (self._polling is None or self._polling.done()):
            self._polling = self._loop.create_task(self._poll_log())
        self._heard = False
        if self._loop.time() < self._expiry.when():  # never past the deadline, closed or not
            self._poller = self._loop.call_later(self._dispatcher.settings.reply_poll, self._tick)

    async def _poll_log(self) -> None:
        try:
            cursor, _, frames = await read_log(
                self._dispatcher.redis, self.request_id, self._cursor
            )
        except UNAVAILABLE as exc:
            log.debug("reply log of %s unreadable: %s", self.request_id, exc)
            return
        self._cursor = max(self._cursor, cursor, key=_id_key)
        for data in frames:  # duplicates of frames already seen are dropped by _next
            self._queue.put_nowait(data)

    async def _catch_up(self) -> bool:
        """Queue the reply log's frames after the cursor; False when Redis is away."""
        try:
            cursor, _, frames = await read_log(
                self._dispatcher.redis, self.request_id, self._cursor
            )
        except UNAVAILABLE as exc:
            log.debug("reply log of %s unreadable: %s", self.request_id, exc)
            await asyncio.sleep(min(self._dispatcher.settings.reply_poll, 0.5))
            return False
        self._cursor = max(self._cursor, cursor, key=_id_key)
        parsed = [ReplyFrame.loads(data) for data in frames]
        self._backlog = deque(sorted([*self._backlog, *parsed], key=lambda f: (f.attempt, f.seq)))
        return True

    async def close(self) -> None:
        """Settle the trace; stop following the reply; the owner cancels the job if it did
        not finish."""
        self._expiry.cancel()
        self._poller.cancel()
        if self._polling is not None:
            self._polling.cancel()
        if self.trace is not None:
            self.trace.finish()
        await self._dispatcher.relay.unsubscribe(keys.reply_channel(self.request_id))
        if self.finished and self.idempotency_key is not None:
            await self._dispatcher.keep(self.request_id, self.idempotency_key)
        if not self.finished and self.owner:
            self._dispatcher.cancel_later(self.request_id, self.meta.model, self.idempotency_key)


def _tenant(job: Job) -> str:
    return job.tenant or keys.ANONYMOUS_TENANT


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
