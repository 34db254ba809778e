"""TTFT and throughput over the last minutes, for the operator console.

Each API process tallies what it observes (time to first token, finished requests, generated
tokens, errors) per model and second, and once a second appends one entry per active model to
the capped stream ``llmspool:{<model>}:timeline``. :func:`read_series` sums every process's
entries into fixed buckets, so the console shows the whole deployment, whichever API process
serves it. Cost: one pipelined round trip per second per API process, nothing per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import keys
from llmspool.shared.messages import Job, JobKind, ReplyFrame, decode_fields
from llmspool.shared.redis import UNAVAILABLE

log = logging.getLogger(__name__)

#: How long entries are kept in a timeline stream.
KEEP_SECONDS = 900


@dataclass
class Tally:
    """What one process saw of one model during one flush interval."""

    first: int = 0
    ttft_sum: float = 0.0
    done: int = 0
    errors: int = 0
    tokens: int = 0

    def fields(self) -> dict[str, str]:
        return {
            "first": str(self.first),
            "ttft_sum": f"{self.ttft_sum:.6f}",
            "done": str(self.done),
            "errors": str(self.errors),
            "tokens": str(self.tokens),
        }


class Timeline:
    """Tallies reply observations in memory and flushes them to Redis once a second."""

    def __init__(self, redis: Redis, interval: float = 1.0) -> None:
        self._redis = redis
        self._interval = interval
        self._tallies: dict[str, Tally] = {}
        self._task: asyncio.Task[None] | None = None

    def observe(self, job: Job, frame: ReplyFrame, first: bool) -> None:
        """Count ``frame`` of ``job``; ``first`` is true for the reply's first frame."""
        tally = self._tallies.setdefault(job.model, Tally())
        if first and job.kind in (JobKind.CHAT, JobKind.COMPLETION):
            tally.first += 1
            tally.ttft_sum += max(time.time() - job.enqueued_at, 0.0)
        if frame.final:
            tally.done += 1
            tally.errors += frame.error is not None
            tally.tokens += frame.usage.completion_tokens if frame.usage else 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-timeline")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Append this interval's tallies; on a Redis outage they are dropped, not retried."""
        tallies, self._tallies = self._tallies, {}
        if not tallies:
            return
        minid = str(int((time.time() - KEEP_SECONDS) * 1000))
        pipe = self._redis.pipeline(transaction=False)
        for model, tally in tallies.items():
            fields: Any = tally.fields()
            pipe.xadd(keys.timeline(model), fields, minid=minid, approximate=True)
        try:
            await pipe.execute()
        except UNAVAILABLE as exc:
            log.warning("timeline not written: redis unavailable (%s)", exc)


class Series(BaseModel):
    """Buckets of ``step`` seconds up to the last complete one: mean TTFT and rates per second."""

    start: float
    step: float
    ttft_ms: list[float | None]
    tokens_per_s: list[float]
    requests_per_s: list[float]
    errors: list[int]


async def read_series(
    redis: Redis, model: str, window: float = 180.0, step: float = 3.0, now: float | None = None
) -> Series:
    """The timeline of ``model`` over the last ``window`` seconds, in buckets of ``step``.

    The bucket in progress is left out: its rates would read low until it closes."""
    now = time.time() if now is None else now
    count = math.ceil(window / step)
    end = math.floor(now / step) * step
    start = end - count * step
    entries = await redis.xrange(keys.timeline(model), min=str(int(start * 1000)), max="+")
    buckets = [Tally() for _ in range(count)]
    for entry_id, raw in entries:
        index = int((int(_text(entry_id).split("-")[0]) / 1000 - start) // step)
        if 0 <= index < count:
            _add(buckets[index], decode_fields(raw))
    return Series(
        start=start,
        step=step,
        ttft_ms=[b.ttft_sum / b.first * 1000 if b.first else None for b in buckets],
        tokens_per_s=[b.tokens / step for b in buckets],
        requests_per_s=[b.done / step for b in buckets],
        errors=[b.errors for b in buckets],
    )


def _add(bucket: Tally, fields: dict[str, str]) -> None:
    bucket.first += int(fields.get("first", 0))
    bucket.ttft_sum += float(fields.get("ttft_sum", 0.0))
    bucket.done += int(fields.get("done", 0))
    bucket.errors += int(fields.get("errors", 0))
    bucket.tokens += int(fields.get("tokens", 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
