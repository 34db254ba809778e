"""Queue numbers read for /metrics agree with what redis-cli XINFO reports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llmspool.consumers.worker import ensure_groups
from llmspool.producer import queue_metrics
from llmspool.shared import keys
from llmspool.shared.registry import RedisRegistry
from tests.helpers import RedisServer


@pytest.fixture
async def redis(clean_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(clean_redis.url)
    yield client
    await client.aclose()


async def test_snapshot_matches_xinfo(redis: Redis, clean_redis: RedisServer) -> None:
    await ensure_groups(redis, "m")
    stream = keys.requests_stream("m")
    for i in range(5):
        await redis.xadd(stream, {"n": str(i)})
    await redis.xreadgroup(keys.GROUP, "c1", {stream: ">"}, count=2)  # 2 in flight, 3 waiting
    await redis.xadd(keys.dead_stream("m"), {"n": "x"})
    (model,) = await queue_metrics.snapshot(redis, RedisRegistry(redis), ["m"])
    requests = model.streams[0]
    assert (requests.lag, requests.pending, requests.length) == (3, 2, 5)
    assert requests.backlog == model.backlog == 5 and model.dead == 1 and model.workers == 0
    assert 0 <= requests.oldest_age < 60
    xinfo = clean_redis.cli("XINFO", "GROUPS", stream).split()
    assert xinfo[xinfo.index("lag") + 1] == "3" and xinfo[xinfo.index("pending") + 1] == "2"
    (absent,) = await queue_metrics.snapshot(
        redis, RedisRegistry(redis), ["absent"]
    )  # no streams: zeros
    assert absent.backlog == 0 and absent.dead == 0
