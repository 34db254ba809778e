"""A model's backlog as the control plane and operators read it (``llmspool queue``,
``/admin/models``, the autoscaler).

For each work stream (requests, batch): ``length`` is XLEN, ``waiting`` is XLEN of its waiting
room (jobs waiting for their tenant's turn, :mod:`llmspool.shared.tenants`), ``lag`` is those
plus the consumer group's lag in XINFO GROUPS (entries added to the stream directly), ``pending``
the group's pending count, ``oldest`` the enqueue time of the oldest job not yet acknowledged
(its entry id's milliseconds). ``dead`` is XLEN of the dead stream. ``backlog`` = lag + pending,
summed over both streams: what the autoscaler scales on, and KEDA with the same figures.

:mod:`llmspool.producer.queue_metrics` reads the same groups for Prometheus, for many models
at once; this reader differs where the control plane needs it to: when Redis cannot tell the lag
(after deletions) it counts the undelivered entries instead of estimating them from the length,
so an idle model is never kept up by acknowledged entries, and its oldest age covers in-flight
jobs.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import keys

#: How many undelivered entries are counted one by one when Redis cannot tell the lag.
_COUNT_CAP = 10_000


class StreamStats(BaseModel):
    """One stream and its consumer group."""

    stream: str
    length: int = 0
    waiting: int = 0
    lag: int = 0
    pending: int = 0
    consumers: int = 0
    oldest: float | None = None


class QueueSummary(BaseModel):
    """A model's queues as every operator view shows them (``llmspool queue``, the admin API,
    the console): backlog = lag (undelivered) + pending (in flight), over both streams."""

    model: str
    backlog: int
    lag: int
    pending: int
    #: Seconds the oldest unacknowledged entry has waited; None when there is none.
    oldest_age: float | None
    dead: int
    #: The requests stream, then the batch stream.
    streams: list[StreamStats]


class QueueStats(BaseModel):
    """A model's queues."""

    model: str
    requests: StreamStats
    batch: StreamStats
    dead: int = 0

    @property
    def lag(self) -> int:
        return self.requests.lag + self.batch.lag

    @property
    def pending(self) -> int:
        return self.requests.pending + self.batch.pending

    @property
    def backlog(self) -> int:
        """Undelivered plus in-flight entries: what scaling follows."""
        return self.lag + self.pending

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds the oldest unacknowledged entry has waited, or None when there is none."""
        times = [s.oldest for s in (self.requests, self.batch) if s.oldest is not None]
        if not times:
            return None
        return max(0.0, (now or time.time()) - min(times))

    def summary(self) -> QueueSummary:
        """The numbers an operator reads."""
        return QueueSummary(
            model=self.model,
            backlog=self.backlog,
            lag=self.lag,
            pending=self.pending,
            oldest_age=self.oldest_age(),
            dead=self.dead,
            streams=[self.requests, self.batch],
        )


async def queue_stats(redis: Redis, model: str) -> QueueStats:
    """Read ``model``'s queues in two round trips at most."""
    requests, batch = keys.model_streams(model)
    pipe = redis.pipeline(transaction=False)
    for stream in (requests, batch):
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, keys.GROUP)
        pipe.xlen(keys.waiting(stream))
        pipe.xrange(keys.waiting(stream), count=1)
    pipe.xlen(keys.dead_stream(model))
    replies = await pipe.execute(raise_on_error=False)
    stats = [
        _stream_stats(stream, replies[i * 5 : i * 5 + 3])
        for i, stream in enumerate((requests, batch))
    ]
    for i, stat in enumerate(stats):
        await _fill_undelivered(redis, stat, _group(replies[i * 5 + 1]))
        _add_waiting(stat, replies[i * 5 + 3], replies[i * 5 + 4])
    return QueueStats(model=model, requests=stats[0], batch=stats[1], dead=_int(replies[10]))


def _add_waiting(stats: StreamStats, length: Any, first: Any) -> None:
    """Count the jobs waiting for their tenant's turn as undelivered, the oldest dated."""
    stats.waiting = _int(length)
    stats.lag += stats.waiting
    if isinstance(first, list) and first:
        waited = _id_time(first[0][0])
        stats.oldest = waited if stats.oldest is None else min(stats.oldest, waited)


def _stream_stats(stream: str, replies: list[Any]) -> StreamStats:
    length, groups, pending = replies
    group = _group(groups)
    stats = StreamStats(stream=stream, length=_int(length))
    if group is None:
        return stats
    stats.pending = _int(group.get("pending"))
    stats.consumers = _int(group.get("consumers"))
    lag = group.get("lag")
    stats.lag = _int(lag) if lag is not None else -1
    if stats.pending and isinstance(pending, dict) and pending.get("min"):
        stats.oldest = _id_time(pending["min"])
    return stats


async def _fill_undelivered(redis: Redis, stats: StreamStats, group: dict[str, Any] | None) -> None:
    """Count undelivered entries when Redis cannot (lag is nil) and date the oldest of them."""
    if group is None:
        return
    if stats.lag >= 0 and (stats.lag == 0 or stats.oldest is not None):
        return  # Redis knew the lag, and pending entries are older than undelivered ones
    last = "(" + _text(group.get("last-delivered-id") or "0-0")
    count = _COUNT_CAP if stats.lag < 0 else 1
    entries = await redis.xrange(stats.stream, min=last, max="+", count=count)
    if stats.lag < 0:
        stats.lag = len(entries)
    if entries and stats.oldest is None:
        stats.oldest = _id_time(entries[0][0])


def _group(groups: Any) -> dict[str, Any] | None:
    """Our group's entry of an XINFO GROUPS reply (redis-py: a dict of mixed values)."""
    if not isinstance(groups, list):
        return None
    for group in groups:
        if _text(group.get("name")) == keys.GROUP:
            return {_text(k): v for k, v in group.items()}
    return None


def _id_time(entry_id: Any) -> float:
    return int(_text(entry_id).split("-")[0]) / 1000


def _int(value: Any) -> int:
    """An integer reply, or 0 for a missing stream (the pipeline hands back the error)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
