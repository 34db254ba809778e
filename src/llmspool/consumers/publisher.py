"""Reply publishing: coalesced frames, sent in one round trip per flush.

Each job writes into a :class:`ReplyStream`. Text that arrives within ``coalesce`` seconds of
the last flush leaves as one frame; a request's first text and its final frame never wait. One
flusher task sends the frames of every running job in one Lua script (a pipeline on a cluster,
where the logs live on many shards), so many jobs cost one Redis round trip per flush instead
of one per token.

Every frame is also appended to the request's reply log (``llmspool:replylog:<id>``, a stream
with a TTL) just before it is published, in the same script: a subscriber that sees a frame
can always find it, and every earlier one, in the log. The log makes streams resumable
(``Last-Event-ID``) and lets an API process recover frames pub/sub lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from redis.asyncio import Redis

from llmspool.shared import commands, keys
from llmspool.shared.messages import ReplyFrame, WireError
from llmspool.shared.protocol import ChatCompletionTokenLogprob, FinishReason, ToolCallDelta, Usage
from llmspool.shared.redis import UNAVAILABLE, is_cluster, queue_publish

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.2  # seconds between tries to publish while Redis is away


class ReplySink(Protocol):
    """Where a running job's text and final frame go: a published :class:`ReplyStream`, or a
    batch line's reply collected in memory. ``index`` is the choice (for ``n`` > 1)."""

    def write(
        self,
        text: str,
        tokens: int,
        index: int = 0,
        logprobs: list[ChatCompletionTokenLogprob] | None = None,
    ) -> None: ...

    def end_choice(self, index: int, finish_reason: FinishReason) -> None: ...

    def write_tool_calls(self, calls: list[ToolCallDelta], tokens: int) -> None: ...

    async def finish(
        self,
        finish_reason: FinishReason | None = None,
        usage: Usage | None = None,
        error: WireError | None = None,
        embeddings: list[list[float]] | None = None,
        token_ids: list[int] | None = None,
        index: int = 0,
    ) -> None: ...


class ReplyStream:
    """The reply of one job attempt, buffered until the publisher flushes it."""

    def __init__(
        self,
        publisher: ReplyPublisher,
        request_id: str,
        attempt: int,
        deadline: float,
        started_at: float,
    ) -> None:
        self._publisher = publisher
        self.request_id = request_id
        self.attempt = attempt
        self.deadline = deadline
        self.started_at = started_at
        self.first_text_at: float | None = None
        self.seq = 0
        # the buffer: text (and logprobs) of one choice, ``index``, not yet sent
        self.text: list[str] = []
        self.tokens = 0
        self.index = 0
        self.logprobs: list[ChatCompletionTokenLogprob] = []
        #: frames closed before the buffer (another choice's text came, or a choice ended)
        self.closed: list[ReplyFrame] = []
        self.final: ReplyFrame | None = None
        self.sent_text = False
        #: pieces of tool calls not yet sent (choice 0)
        self.tool_calls: list[ToolCallDelta] = []

    def write(
        self,
        text: str,
        tokens: int,
        index: int = 0,
        logprobs: list[ChatCompletionTokenLogprob] | None = None,
    ) -> None:
        """Queue text; the first text of a reply is flushed at once."""
        if self.first_text_at is None:
            self.first_text_at = time.time()
        if index != self.index:
            self._close(index)
        self.text.append(text)
        self.tokens += tokens
        if logprobs:
            self.logprobs += logprobs
        self._publisher.mark(self, urgent=not self.sent_text)

    def write_tool_calls(self, calls: list[ToolCallDelta], tokens: int) -> None:
        """Queue pieces of tool calls, like text (argument fragments coalesce)."""
        if self.first_text_at is None:
            self.first_text_at = time.time()
        for call in calls:
            coalesce_tool_call(self.tool_calls, call)
        self.tokens += tokens
        self._publisher.mark(self, urgent=not self.sent_text)

    def end_choice(self, index: int, finish_reason: FinishReason) -> None:
        """Choice ``index`` ended while others go on (``n`` > 1)."""
        self._close(index)  # the buffer now holds this choice's text, which ends with it
        ending = self._frame(finish_reason=finish_reason, index=index or None, more=True)
        self.closed.append(self._take(ending))
        self._publisher.mark(self, urgent=False)

    async def finish(
        self,
        finish_reason: FinishReason | None = None,
        usage: Usage | None = None,
        error: WireError | None = None,
        embeddings: list[list[float]] | None = None,
        token_ids: list[int] | None = None,
        index: int = 0,
    ) -> None:
        """Queue the final frame and wait until it has been published."""
        self._close(index)
        self.final = self._frame(
            finish_reason=finish_reason,
            usage=usage,
            error=error,
            embeddings=embeddings,
            token_ids=token_ids,
            index=index or None,
        )
        await self._publisher.flush_and_wait(self)

    def _frame(self, **fields: object) -> ReplyFrame:
        frame = {"request_id": self.request_id, "attempt": self.attempt, "seq": 0, **fields}
        return ReplyFrame.model_validate(frame)

    def _close(self, index: int) -> None:
        """Close the buffer into a frame unless it is empty or already holds ``index``."""
        if index == self.index:
            return
        if self.text or self.logprobs or self.tool_calls:
            self.closed.append(self._take(self._frame(index=self.index or None)))
        self.index = index

    def _take(self, frame: ReplyFrame) -> ReplyFrame:
        """``frame`` with the buffer's text, tokens and logprobs; the buffer emptied."""
        frame.text, frame.tokens = "".join(self.text), self.tokens
        if self.logprobs:
            frame.logprobs, self.logprobs = self.logprobs, []
        if self.tool_calls:
            frame.tool_calls, self.tool_calls = self.tool_calls, []
        self.sent_text = self.sent_text or bool(self.text) or bool(frame.tool_calls)
        self.text, self.tokens = [], 0
        return frame

    def take_frames(self) -> list[ReplyFrame]:
        """The frames to send now, in order (none when nothing is buffered)."""
        frames, self.closed = self.closed, []
        if self.text or self.logprobs or self.tool_calls or self.final is not None:
            frame = self.final or self._frame(index=self.index or None)
            frames.append(self._take(frame))
        for frame in frames:
            self.seq += 1
            frame.seq = self.seq
            if frame.seq == 1 or frame.final:
                frame.started_at = self.started_at
        return frames


class ReplyPublisher:
    """One flusher task per worker; every job's frames leave through it."""

    def __init__(self, redis: Redis, coalesce: float, worker_id: str, log_ttl: int = 300) -> None:
        self._redis = redis
        self._coalesce = coalesce
        self._worker_id = worker_id
        self._log_ttl = log_ttl
        self._sharded = is_cluster(redis)
        self._dirty: dict[ReplyStream, None] = {}
        self._waiters: dict[ReplyStream, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._unsent: list[tuple[ReplyStream, ReplyFrame]] = []
        self._unsettled: list[asyncio.Future[None]] = []
        #: frames and tokens published since start (metrics read these)
        self.frames_sent = 0
        self.tokens_sent = 0

    def stream(
        self, request_id: str, attempt: int, deadline: float, started_at: float | None = None
    ) -> ReplyStream:
        return ReplyStream(self, request_id, attempt, deadline, started_at or time.time())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reply-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def mark(self, stream: ReplyStream, urgent: bool) -> None:
        self._dirty[stream] = None
        self._urgent = self._urgent or urgent
        self._wake.set()

    async def flush_and_wait(self, stream: ReplyStream) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[stream] = waiter
        self.mark(stream, urgent=True)
        await waiter

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent and self._coalesce > 0:
                await asyncio.sleep(self._coalesce)
            self._wake.clear()
            self._urgent = False
            await self._flush()

    async def _flush(self) -> None:
        dirty, self._dirty = list(self._dirty), {}
        frames = self._unsent + [(s, f) for s in dirty for f in s.take_frames()]
        waiters = self._unsettled + [self._waiters.pop(s) for s in dirty if s in self._waiters]
        self._unsent, self._unsettled = [], []
        try:
            await self._send(frames)
        except UNAVAILABLE as exc:
            # Redis is away: keep the frames, in order, and try again; the jobs waiting on
            # their final frame wait with them (a resent frame is dropped by its reader).
            log.warning("publishing %d reply frames failed, retrying: %s", len(frames), exc)
            self._unsent, self._unsettled = frames, waiters
            await asyncio.sleep(_RETRY_DELAY)
            self._mark_retry()
            return
        except Exception as exc:
            log.warning("publishing %d reply frames failed: %s", len(frames), exc)
            _settle_all(waiters, exc)
            return
        _settle_all(waiters, None)

    def _mark_retry(self) -> None:
        self._urgent = True
        self._wake.set()

    async def _send(self, frames: list[tuple[ReplyStream, ReplyFrame]]) -> None:
        if not frames:
            return
        now = time.time()
        entries = []  # (log key, TTL or 0, channel, data) per frame
        for stream, frame in frames:
            first_or_final = frame.seq == 1 or frame.final
            if first_or_final:
                frame.worker = self._worker_id
            # The TTL is refreshed now and then, not per frame: the log must outlive the job.
            refresh = first_or_final or frame.seq % 16 == 0
            ttl = self._log_ttl + max(0, int(stream.deadline - now)) if refresh else 0
            entries.append(
                (
                    keys.reply_log(frame.request_id),
                    ttl,
                    keys.reply_channel(frame.request_id),
                    frame.dumps(),
                )
            )
            self.tokens_sent += frame.tokens
        if self._sharded:
            await self._send_pipelined(entries)
        else:
            await self._send_scripted(entries)
        self.frames_sent += len(frames)

    async def _send_scripted(self, entries: list[tuple[str, int, str, bytes]]) -> None:
        """Every frame of the flush in one EVAL: one command and one reply per flush, where a
        pipeline cost two or three of each per frame (redis-py's packing and reply parsing were
        most of the worker's CPU per token; see bench/notes.md)."""
        log_keys = [entry[0] for entry in entries]
        args: list[Any] = []
        for _, ttl, channel, data in entries:
            args += [ttl, channel, data]
        await commands.run_script(self._redis, _PUBLISH_FRAMES, log_keys, args)

    async def _send_pipelined(self, entries: list[tuple[str, int, str, bytes]]) -> None:
        """On a cluster the logs live on many shards: one pipeline, split by shard."""
        pipe = self._redis.pipeline(transaction=False)
        for log_key, ttl, channel, data in entries:
            pipe.xadd(log_key, {"f": data})
            if ttl:
                pipe.expire(log_key, ttl)
            queue_publish(pipe, channel, data, sharded=True)
        await pipe.execute()


#: KEYS: the frames' reply logs; ARGV: TTL (0: keep it), channel, frame, per frame. Each frame
#: is appended to its log just before it is published, as the module docstring says.
_PUBLISH_FRAMES = """
for i = 1, #KEYS do
  local base = (i - 1) * 3
  redis.call('XADD', KEYS[i], '*', 'f', ARGV[base + 3])
  local ttl = tonumber(ARGV[base + 1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  redis.call('PUBLISH', ARGV[base + 2], ARGV[base + 3])
end
return #KEYS
"""


def _settle_all(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def coalesce_tool_call(calls: list[ToolCallDelta], call: ToolCallDelta) -> None:
    """Append ``call`` to ``calls``, joining an argument fragment onto the last piece of the
    same call (so a frame carries one piece per call, not one per token)."""
    last = calls[-1] if calls else None
    fragment = call.id is None and (call.function is None or call.function.name is None)
    if last is None or not fragment or last.index != call.index or last.function is None:
        calls.append(call)
        return
    more = call.function.arguments if call.function is not None else None
    joined = (last.function.arguments or "") + (more or "")
    function = last.function.model_copy(update={"arguments": joined})
    calls[-1] = last.model_copy(update={"function": function})
