"""What the Redis streams hold right now: depth, lag, pending, oldest age, dead jobs, workers.

The numbers are those ``redis-cli XINFO GROUPS`` reports (``lag``: entries not yet delivered to
the group; ``pending``: delivered, not yet acknowledged). :func:`snapshot` reads every model in
two pipelined round trips plus one registry scan, so a Prometheus scrape costs the same however
long the queues are. :class:`QueueCollector` turns a snapshot into metric families.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llmspool.shared import keys
from llmspool.shared.errors import RegistryUnavailable
from llmspool.shared.metrics import MODEL, PREFIX
from llmspool.shared.registry import Registry, WorkerInfo

#: Kinds of work stream, as the ``queue`` label names them.
QUEUES = ("requests", "batch")


@dataclass(frozen=True)
class StreamStats:
    """One work stream of one model."""

    queue: str
    length: int
    lag: int
    pending: int
    oldest_age: float

    @property
    def backlog(self) -> int:
        """Entries not yet delivered plus entries in flight (what the autoscaler scales on)."""
        return self.lag + self.pending


@dataclass
class _Group:
    """A stream's length and its consumer group's numbers, from the first pass."""

    length: int
    lag: int = 0
    pending: int = 0
    #: The group's last-delivered-id; None when the group does not exist.
    last: str | None = None


@dataclass(frozen=True)
class ModelQueues:
    """Every queue number of one model."""

    model: str
    streams: tuple[StreamStats, ...]
    dead: int
    #: live workers in the registry; None while the registry cannot be reached
    workers: int | None
    desired: int | None = None

    @property
    def backlog(self) -> int:
        return sum(stream.backlog for stream in self.streams)


async def snapshot(redis: Redis, registry: Registry, models: Sequence[str]) -> list[ModelQueues]:
    """The queue numbers of ``models``, read now, with their live workers from ``registry``."""
    groups = await _first_pass(redis, models)
    oldest = await _oldest_undelivered(redis, models, groups)
    counts = await _worker_counts(registry)
    result = []
    for i, model in enumerate(models):
        streams = tuple(
            _stream_stats(queue, groups[i][j], oldest[i][j]) for j, queue in enumerate(QUEUES)
        )
        workers = None if counts is None else counts.get(model, 0)
        result.append(ModelQueues(model, streams, groups[i][2].length, workers))
    return result


async def _first_pass(redis: Redis, models: Sequence[str]) -> list[list[_Group]]:
    pipe = redis.pipeline(transaction=False)
    for model in models:
        for stream in keys.model_streams(model):
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            pipe.xlen(keys.waiting(stream))
        pipe.xlen(keys.dead_stream(model))
    replies = await pipe.execute(raise_on_error=False)
    per_model = 3 * len(QUEUES) + 1
    return [_parse_model(replies[i * per_model : (i + 1) * per_model]) for i in range(len(models))]


def _parse_model(replies: list[Any]) -> list[_Group]:
    """The work streams' groups, then the dead stream's length."""
    parsed = [_group_info(*replies[3 * j : 3 * j + 3]) for j in range(len(QUEUES))]
    parsed.append(_Group(length=_int(replies[-1])))
    return parsed


def _group_info(groups: Any, length: Any, waiting: Any) -> _Group:
    """The group's numbers; ``lag`` counts the jobs waiting for their tenant's turn too."""
    info = _Group(length=_int(length))
    if not isinstance(groups, ResponseError | BaseException) and groups:
        _read_group(info, groups)
    info.lag += _int(waiting)
    return info


def _read_group(info: _Group, groups: Any) -> None:
    for group in groups:
        fields = {_text(k): v for k, v in group.items()}
        if _text(fields.get("name")) != keys.GROUP:
            continue
        info.pending = _int(fields.get("pending"))
        info.last = _text(fields.get("last-delivered-id"))
        lag = fields.get("lag")
        # Redis leaves lag unset when deletions make it unknowable; the length bounds it.
        info.lag = _int(lag) if lag is not None else max(info.length - info.pending, 0)


async def _oldest_undelivered(
    redis: Redis, models: Sequence[str], groups: list[list[_Group]]
) -> list[list[float]]:
    """Age in seconds of the first entry not yet delivered in each stream (0 when none)."""
    pipe = redis.pipeline(transaction=False)
    for i, model in enumerate(models):
        for j, stream in enumerate(keys.model_streams(model)):
            info = groups[i][j]
            start = f"({info.last}" if info.last else "-"
            pipe.xrange(stream, min=start, max="+", count=1)
            pipe.xrange(keys.waiting(stream), count=1)
    replies = await pipe.execute(raise_on_error=False)
    now = time.time()
    # per stream: its first undelivered entry, then the first job of its waiting room
    pairs = zip(replies[::2], replies[1::2], strict=True)
    ages = [max(_age(first, now), _age(waiting, now)) for first, waiting in pairs]
    return [ages[i * len(QUEUES) : (i + 1) * len(QUEUES)] for i in range(len(models))]


def _age(reply: Any, now: float) -> float:
    if isinstance(reply, BaseException) or not reply:
        return 0.0
    entry_id = _text(reply[0][0])
    return max(now - int(entry_id.split("-")[0]) / 1000, 0.0)


def _stream_stats(queue: str, info: _Group, oldest: float) -> StreamStats:
    age = oldest if info.lag else 0.0
    return StreamStats(queue, info.length, info.lag, info.pending, age)


async def _worker_counts(registry: Registry) -> dict[str, int] | None:
    """Live workers per model; None while an external registry (etcd) cannot be reached."""
    try:
        workers: Iterable[WorkerInfo] = await registry.live_workers()
    except RegistryUnavailable:
        return None
    counts: dict[str, int] = {}
    for worker in workers:
        counts[worker.model] = counts.get(worker.model, 0) + 1
    return counts


def _int(value: Any) -> int:
    if isinstance(value, BaseException) or value is None:
        return 0
    return int(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class QueueCollector(Collector):
    """Metric families of one snapshot (built per scrape: it holds no state between them)."""

    def __init__(self, queues: Sequence[ModelQueues], redis_up: bool = True) -> None:
        self._queues = queues
        self._redis_up = redis_up

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(PREFIX + "redis_up", "1 when the API could read Redis.")
        up.add_metric([], 1.0 if self._redis_up else 0.0)
        registry_up = GaugeMetricFamily(
            PREFIX + "registry_up", "1 when the API could read the worker registry."
        )
        if self._queues:  # read along with the queues (unknown when Redis could not be read)
            known = all(model.workers is not None for model in self._queues)
            registry_up.add_metric([], 1.0 if known else 0.0)
        return [up, registry_up, *self._stream_families(), *self._model_families()]

    def _stream_families(self) -> list[Metric]:
        specs = {
            "queue_depth": "Backlog of a work stream: entries not yet delivered plus in flight.",
            "queue_lag": "Entries of a work stream not yet delivered to any worker (XINFO lag).",
            "queue_pending": "Entries delivered to a worker and not yet acknowledged (in flight).",
            "queue_length": "Entries in a work stream, acknowledged ones included (XLEN).",
            "queue_oldest_age_seconds": "Age of the oldest entry not yet delivered.",
        }
        families = {
            name: GaugeMetricFamily(PREFIX + name, text, labels=[MODEL, "queue"])
            for name, text in specs.items()
        }
        for model in self._queues:
            for s in model.streams:
                labels = [model.model, s.queue]
                families["queue_depth"].add_metric(labels, s.backlog)
                families["queue_lag"].add_metric(labels, s.lag)
                families["queue_pending"].add_metric(labels, s.pending)
                families["queue_length"].add_metric(labels, s.length)
                families["queue_oldest_age_seconds"].add_metric(labels, s.oldest_age)
        return list(families.values())

    def _model_families(self) -> list[Metric]:
        dead = GaugeMetricFamily(
            PREFIX + "dead_jobs",
            "Jobs in the dead stream (failed max_attempts times).",
            labels=[MODEL],
        )
        workers = GaugeMetricFamily(
            PREFIX + "workers", "Live workers in the registry.", labels=[MODEL]
        )
        desired = GaugeMetricFamily(
            PREFIX + "desired_workers", "Workers the autoscaler wants.", labels=[MODEL]
        )
        for model in self._queues:
            dead.add_metric([model.model], model.dead)
            if model.workers is not None:
                workers.add_metric([model.model], model.workers)
            if model.desired is not None:
                desired.add_metric([model.model], model.desired)
        return [dead, workers, desired]
