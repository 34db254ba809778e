"""The registry interface on both implementations, against a real redis-server and a real etcd:
register, heartbeat, list by model, deregister, expiry by TTL, watch; and for etcd a server that
goes away and comes back empty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from llmspool.shared.errors import ConfigError, RegistryUnavailable
from llmspool.shared.redis import connect
from llmspool.shared.registry import (
    RedisRegistry,
    Registry,
    RegistryEvent,
    WorkerInfo,
    open_registry,
)
from llmspool.shared.registry.etcd import EtcdAddress, EtcdRegistry
from llmspool.shared.settings import Settings
from tests.helpers import EtcdServer, RedisServer

TTL = 2.0  # the shortest lease etcd grants


def worker(model: str = "m", n: int = 0) -> WorkerInfo:
    return WorkerInfo(
        id=f"{model}@host:{100 + n}:abc{n}",
        model=model,
        backend="fake",
        host="host",
        pid=100 + n,
        capacity=4,
        started=time.time() + n,
    )


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Await ``condition`` (polled) for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(params=["redis", "etcd"])
async def registry(
    request: pytest.FixtureRequest, clean_redis: RedisServer
) -> AsyncIterator[Registry]:
    redis = connect(Settings(redis_url=clean_redis.url))
    chosen: Registry = RedisRegistry(redis, ttl=TTL)
    if request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd")
        chosen = EtcdRegistry.from_url(etcd.url, ttl=TTL)
    yield chosen
    await chosen.close()
    await redis.aclose()


async def test_register_list_by_model_heartbeat_deregister(registry: Registry) -> None:
    a, b, other = worker("m", 0), worker("m", 1), worker("other", 2)
    for info in (b, other, a):
        await registry.register(info)
    assert [w.id for w in await registry.live_workers()] == [a.id, b.id, other.id]
    assert [w.id for w in await registry.live_workers("m")] == [a.id, b.id]
    a.in_flight = 3
    await registry.heartbeat(a)
    (seen,) = [w for w in await registry.live_workers("m") if w.id == a.id]
    assert seen == a and seen.in_flight == 3 and seen.last_beat > 0
    await registry.deregister(a.id)
    assert [w.id for w in await registry.live_workers()] == [b.id, other.id]


async def test_an_entry_without_heartbeats_expires_within_the_ttl(registry: Registry) -> None:
    kept, dead = worker("m", 0), worker("m", 1)
    await registry.register(kept)
    await registry.register(dead)
    started = time.monotonic()

    async def only_kept() -> bool:
        await registry.heartbeat(kept)
        return [w.id for w in await registry.live_workers()] == [kept.id]

    await until(only_kept, TTL + 5, "the silent worker's entry to expire")
    # etcd revokes expired leases on its own schedule: allow it a couple of seconds past the TTL
    assert time.monotonic() - started > TTL / 2


async def test_watch_sees_registrations_updates_and_departures(registry: Registry) -> None:
    first = worker("m", 0)
    await registry.register(first)
    events: list[RegistryEvent] = []

    async def collect() -> None:
        async for event in registry.watch():
            events.append(event)

    task = asyncio.create_task(collect())
    try:

        async def seen(kind: str, worker_id: str) -> bool:
            return any(e.kind == kind and e.worker_id == worker_id for e in events)

        await until(lambda: seen("put", first.id), 10, "the snapshot's put")
        second = worker("m", 1)
        await registry.register(second)
        await until(lambda: seen("put", second.id), 10, "the new worker's put")
        await registry.deregister(first.id)
        await until(lambda: seen("delete", first.id), 10, "the departure")
        (gone,) = [e for e in events if e.kind == "delete"]
        assert gone.worker is not None and gone.worker.id == first.id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_deployments_under_different_prefixes_do_not_see_each_other(
    etcd: EtcdServer,
) -> None:
    one = EtcdRegistry.from_url(etcd.url + "-one", ttl=TTL)
    two = EtcdRegistry.from_url(etcd.url + "-two", ttl=TTL)
    try:
        await one.register(worker("m", 0))
        assert [w.pid for w in await one.live_workers()] == [100]
        assert await two.live_workers() == []
        key = EtcdAddress.parse(etcd.url + "-one").worker_key(worker("m", 0).id).decode()
        assert '"model":"m"' in etcd.ctl("get", key, "--print-value-only")
    finally:
        await one.close()
        await two.close()


async def test_etcd_away_is_an_error_not_a_hang_and_a_heartbeat_reregisters(
    own_etcd: EtcdServer,
) -> None:
    registry = EtcdRegistry.from_url(own_etcd.url, ttl=TTL)
    info = worker()
    try:
        await registry.register(info)
        own_etcd.stop()
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            await registry.live_workers()
        with pytest.raises(RegistryUnavailable):
            await registry.heartbeat(info)
        own_etcd.start(wipe=True)  # back, but empty: the worker's lease is unknown there

        async def registered_again() -> bool:
            try:
                await registry.heartbeat(info)
                return [w.id for w in await registry.live_workers()] == [info.id]
            except RegistryUnavailable:
                return False  # the channel is still reconnecting

        await until(registered_again, 30, "the worker to register again")
    finally:
        await registry.close()


def test_the_setting_selects_the_registry(etcd: EtcdServer, redis_server: RedisServer) -> None:
    redis = connect(Settings(redis_url=redis_server.url))
    assert isinstance(open_registry(Settings(), redis), RedisRegistry)
    chosen = open_registry(Settings(registry_url=etcd.url, registry_ttl=4), redis)
    assert isinstance(chosen, EtcdRegistry) and chosen.ttl == 4
    assert chosen.address == EtcdAddress("127.0.0.1", etcd.port, etcd.prefix)
    assert EtcdAddress.parse("etcd://u:p%40ss@h").prefix == "/llmspool"
    assert EtcdAddress.parse("etcd://u:p%40ss@h").password == "p@ss"
    with pytest.raises(ConfigError, match="unknown registry"):
        open_registry(Settings(registry_url="consul://h:8500"), redis)
