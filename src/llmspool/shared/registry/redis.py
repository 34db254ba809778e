"""The default registry: one hash per live worker in the queue's own Redis, kept alive by
heartbeats, gone by TTL.

``redis-cli --scan --pattern 'llmspool:worker:*'`` lists live workers;
``redis-cli HGETALL llmspool:worker:<id>`` shows one.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from llmspool.shared import commands, keys
from llmspool.shared.registry.base import TTL_SECONDS, Registry, WorkerInfo, by_model_and_age


class RedisRegistry(Registry):
    """Workers as hashes with a TTL in the Redis that carries the jobs (no other service to run;
    the registry is up exactly when the queue is)."""

    name = "Redis"

    def __init__(self, redis: Redis, ttl: float = TTL_SECONDS) -> None:
        super().__init__(ttl)
        self.redis = redis

    async def register(self, info: WorkerInfo) -> None:
        await self.heartbeat(info)

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Write ``info`` with a fresh TTL (a hash that expired is simply written again)."""
        info.last_beat = time.time()
        key = keys.worker(info.id)
        mapping: Any = info.to_mapping()
        pipe = self.redis.pipeline(transaction=False)  # one key; a cluster refuses MULTI pipelines
        pipe.hset(key, mapping=mapping)
        pipe.pexpire(key, int(self.ttl * 1000))
        await pipe.execute()

    async def deregister(self, worker_id: str) -> None:
        await self.redis.delete(keys.worker(worker_id))

    async def live_workers(self, model: str | None = None) -> list[WorkerInfo]:
        workers = []
        async for key in self.redis.scan_iter(match=keys.worker_pattern(), count=500):
            raw = await commands.hgetall(self.redis, _s(key))
            if raw:  # expired between the scan and the read
                workers.append(WorkerInfo.model_validate({_s(k): _s(v) for k, v in raw.items()}))
        return by_model_and_age(workers, model)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
