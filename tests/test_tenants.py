"""Fair turns between tenants inside one model's queue (shared/tenants.py), on a real
redis-server: the scripts themselves, then the whole system with two API keys."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from llmspool.consumers.delivery import Deliveries
from llmspool.shared import keys, tenants
from llmspool.shared.streams import ensure_groups
from tests.helpers import RedisServer

STREAM = keys.requests_stream("m")


@pytest.fixture
async def redis(clean_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(clean_redis.url, decode_responses=True)
    await ensure_groups(client, "m")
    yield client
    await client.aclose()


async def put(
    redis: Redis, tenant: str, n: int, weight: float = 1, limit: int = 0, start: int = 0
) -> list[int]:
    """Enqueue ``n`` jobs of ``tenant``; the admitted flags (1) and refusals (0)."""
    admitted = []
    for i in range(start, start + n):
        fields = {"request_id": f"{tenant}-{i}", "tenant": tenant}
        command = tenants.enqueue_command(STREAM, tenant, weight, limit, fields)
        added, _ = await redis.eval(tenants.ENQUEUE, *command)  # type: ignore[misc]
        admitted.append(int(added))
    return admitted


async def take_ids(redis: Redis, n: int, count: int = 1) -> list[str]:
    """Request ids of the next ``n`` jobs taken, ``count`` per take."""
    worker = Deliveries(redis, "m", "w1", lease=30)
    taken: list[str] = []
    while len(taken) < n:
        entries = await worker.read(count)
        if not entries:
            break
        taken += [entry.request_id for entry in entries]
    return taken


async def test_a_flood_does_not_hold_back_a_trickle(redis: Redis) -> None:
    await put(redis, "flood", 50)
    await put(redis, "trickle", 2)
    taken = await take_ids(redis, 6)
    # turns alternate: the trickle's jobs come second and fourth, not after fifty
    assert taken == ["flood-0", "trickle-0", "flood-1", "trickle-1", "flood-2", "flood-3"]
    assert await redis.xlen(keys.waiting(STREAM)) == 46
    assert await redis.zrange(keys.turns(STREAM), 0, -1) == ["flood"]


async def test_weights_share_the_turns(redis: Redis) -> None:
    await put(redis, "heavy", 100, weight=3)
    await put(redis, "light", 100, weight=1)
    shares = Counter(rid.split("-")[0] for rid in await take_ids(redis, 80, count=4))
    assert shares == {"heavy": 60, "light": 20}


async def test_an_idle_tenant_neither_banks_nor_loses_turns(redis: Redis) -> None:
    await put(redis, "a", 20)
    await take_ids(redis, 10)  # only a waits: its turns advance alone
    await put(redis, "b", 3)
    taken = await take_ids(redis, 4)
    assert Counter(rid.split("-")[0] for rid in taken) == {"a": 2, "b": 2}  # no burst of b


async def test_taken_jobs_are_ordinary_pending_entries(redis: Redis) -> None:
    direct = await redis.xadd(STREAM, {"request_id": "requeued"})  # e.g. a requeued dead job
    await put(redis, "a", 2)
    worker = Deliveries(redis, "m", "dies", lease=0.05)
    first = await worker.read(2)
    assert [e.request_id for e in first] == ["requeued", "a-0"] and first[0].id == direct
    assert all(e.stream == STREAM and e.fields["tenant"] == "a" for e in first[1:])
    summary = await redis.xpending(STREAM, keys.GROUP)
    assert summary["pending"] == 2  # at least once: pending until acknowledged
    await asyncio.sleep(0.1)
    heir = Deliveries(redis, "m", "heir", lease=0.05)
    reclaimed = await heir.reclaim(5)
    assert {e.request_id for e in reclaimed} == {"requeued", "a-0"}
    assert all(e.delivery == 2 for e in reclaimed)


async def test_a_full_queue_still_admits_a_newcomer(redis: Redis) -> None:
    assert await put(redis, "flood", 5, limit=4) == [1, 1, 1, 1, 0]
    # the flood holds the whole limit; a newcomer is under its share (4 * 1/2) and gets in
    assert await put(redis, "polite", 3, limit=4) == [1, 1, 0]
    assert await put(redis, "flood", 1, limit=4, start=5) == [0]
    await take_ids(redis, 4)  # 2 of each: the flood has 2 waiting, 4 in flight
    assert await put(redis, "flood", 1, limit=4, start=6) == [0]


async def test_a_lone_tenant_keeps_the_old_limit(redis: Redis) -> None:
    assert await put(redis, "anonymous", 3, limit=3) == [1, 1, 1]
    await take_ids(redis, 2)  # two in flight, one waiting: still three in all
    assert await put(redis, "anonymous", 1, limit=3, start=3) == [0]


async def test_the_doorbell_wakes_a_waiting_worker(redis: Redis) -> None:
    worker = Deliveries(redis, "m", "w1", lease=30)
    assert await worker.read(4) == []
    assert not await redis.exists(keys.doorbell(STREAM))  # a take that found nothing clears it
    started = time.monotonic()
    waiter = asyncio.create_task(worker.wait([STREAM, keys.batch_stream("m")], 20_000))
    await asyncio.sleep(0.1)
    await put(redis, "a", 1)
    await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - started < 10
    assert [e.request_id for e in await worker.read(4)] == ["a-0"]


async def test_every_key_of_a_model_shares_its_hash_slot(redis: Redis) -> None:
    await put(redis, "a", 1)
    names = [name async for name in redis.scan_iter(match=f"{STREAM}*")]
    assert len(names) >= 6
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{m}")}
