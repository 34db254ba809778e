"""Queue depth as redis-cli shows it, on a real redis-server."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from llmspool.shared import keys
from llmspool.shared.backlog import queue_stats
from tests.helpers import RedisServer

STREAM = keys.requests_stream("m")


async def test_lag_pending_oldest_and_dead(clean_redis: RedisServer) -> None:
    redis = Redis(port=clean_redis.port)
    try:
        empty = await queue_stats(redis, "m")
        assert empty.backlog == 0 and empty.oldest_age() is None and empty.dead == 0
        await redis.xgroup_create(STREAM, keys.GROUP, id="0", mkstream=True)
        ids = [await redis.xadd(STREAM, {"n": str(i)}) for i in range(4)]
        await redis.xadd(keys.dead_stream("m"), {"n": "x"})
        await redis.xreadgroup(keys.GROUP, "w1", {STREAM: ">"}, count=1)
        stats = await queue_stats(redis, "m")
        group = (await redis.xinfo_groups(STREAM))[0]
        assert (stats.lag, stats.pending) == (group["lag"], group["pending"]) == (3, 1)
        assert stats.backlog == 4 and stats.dead == 1 and stats.requests.length == 4
        assert stats.requests.oldest == int(ids[0].split(b"-")[0]) / 1000
        assert 0 <= stats.oldest_age(time.time()) < 60

        await redis.xack(STREAM, keys.GROUP, ids[0])
        stats = await queue_stats(redis, "m")  # nothing pending: the oldest is undelivered
        assert stats.pending == 0 and stats.requests.oldest == int(ids[1].split(b"-")[0]) / 1000

        await redis.xdel(STREAM, ids[2])  # a hole: Redis can no longer tell the lag
        assert (await redis.xinfo_groups(STREAM))[0]["lag"] is None
        assert (await queue_stats(redis, "m")).lag == 2  # counted one by one instead
    finally:
        await redis.aclose()


async def test_consumers_of_gone_workers_are_deleted(clean_redis: RedisServer) -> None:
    """Only consumers with nothing pending, idle long enough, and not the caller itself."""
    from llmspool.consumers.delivery import Deliveries

    redis = Redis(port=clean_redis.port)
    try:
        await redis.xgroup_create(STREAM, keys.GROUP, id="0", mkstream=True)
        ids = [await redis.xadd(STREAM, {"n": str(i)}) for i in range(3)]
        await redis.xreadgroup(keys.GROUP, "gone", {STREAM: ">"}, count=1)
        await redis.xack(STREAM, keys.GROUP, ids[0])  # settled: nothing pending
        await redis.xreadgroup(keys.GROUP, "busy", {STREAM: ">"}, count=1)  # one pending
        await redis.xreadgroup(keys.GROUP, "me", {STREAM: ">"}, count=1)
        await redis.xack(STREAM, keys.GROUP, ids[2])  # the caller: nothing pending either
        mine = Deliveries(redis, "m", "me", lease=30)
        assert await mine.forget_gone(idle_ms=60_000) == 0  # nobody idle that long yet
        await asyncio.sleep(0.05)
        assert await mine.forget_gone(idle_ms=10) == 1
        names = {c["name"] for c in await redis.xinfo_consumers(STREAM, keys.GROUP)}
        assert names == {b"busy", b"me"}  # pending kept; the caller kept
    finally:
        await redis.aclose()
