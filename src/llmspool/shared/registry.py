"""The worker registry: one hash per live worker, kept alive by heartbeats, gone by TTL.

``redis-cli --scan --pattern 'llmspool:worker:*'`` lists live workers;
``redis-cli HGETALL llmspool:worker:<id>`` shows one.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import keys

HEARTBEAT_SECONDS = 2.0
TTL_SECONDS = 10


class WorkerInfo(BaseModel):
    """A registry entry."""

    id: str
    model: str
    backend: str
    host: str
    pid: int
    capacity: int
    in_flight: int = 0
    #: tokens the engine generated since start, aborted jobs included (where it counts them)
    engine_tokens: int = 0
    started: float
    last_beat: float = 0.0
    state: str = "serving"
    #: ``host:port`` of the worker's own /metrics ("" when it serves none).
    metrics: str = ""

    def to_mapping(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.model_dump().items()}


async def beat(redis: Redis, info: WorkerInfo) -> None:
    """Write ``info`` with a fresh TTL (the heartbeat)."""
    info.last_beat = time.time()
    key = keys.worker(info.id)
    mapping: Any = info.to_mapping()
    pipe = redis.pipeline(transaction=False)  # one key; a cluster refuses MULTI pipelines
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, TTL_SECONDS)
    await pipe.execute()


async def deregister(redis: Redis, worker_id: str) -> None:
    await redis.delete(keys.worker(worker_id))


async def live_workers(redis: Redis, model: str | None = None) -> list[WorkerInfo]:
    """Every registered worker (of ``model``, when given)."""
    workers = []
    async for key in redis.scan_iter(match=keys.worker_pattern(), count=500):
        raw: dict[Any, Any] = await redis.hgetall(key)  # type: ignore[misc]
        if not raw:
            continue
        info = WorkerInfo.model_validate({_s(k): _s(v) for k, v in raw.items()})
        if model is None or info.model == model:
            workers.append(info)
    return sorted(workers, key=lambda w: (w.model, w.started))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
