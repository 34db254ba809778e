"""The control loop against a real Redis, with a driver that records what it is told."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llmspool.control.controller import Controller
from llmspool.shared import controlstate, keys
from llmspool.shared.config import Config, ModelConfig, parse_config
from llmspool.shared.errors import ConfigError
from llmspool.shared.registry import WorkerInfo
from tests.helpers import RedisServer


class RecordingDriver:
    name = "recording"

    def __init__(self) -> None:
        self.scaled: dict[str, int] = {}
        self.restarted: list[str] = []
        self.removed: list[str] = []

    async def scale(self, model: ModelConfig, workers: int, live: list[WorkerInfo]) -> None:
        self.scaled[model.name] = workers

    async def restart(self, model: ModelConfig) -> None:
        self.restarted.append(model.name)

    async def remove(self, model: str) -> None:
        self.removed.append(model)


def config(*models: dict[str, object]) -> Config:
    return parse_config({"models": [{"backend": "fake", **m} for m in models]})


BASE = config(
    {"name": "a", "min_workers": 0, "max_workers": 4, "max_concurrency": 2},
    {"name": "b", "min_workers": 1, "max_workers": 1},
)


@pytest.fixture
async def redis(clean_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(port=clean_redis.port)
    yield client
    await client.aclose()


async def test_backlog_pins_and_offline(redis: Redis) -> None:
    driver = RecordingDriver()
    controller = Controller(BASE, redis, driver, lambda: BASE)
    await controller.start()
    await controller.tick()
    assert driver.scaled == {"a": 0, "b": 1}
    for _ in range(5):
        await redis.xadd(keys.requests_stream("a"), {"n": "1"})
    await controller.tick()
    assert driver.scaled["a"] == 3  # ceil(5 / 2)
    await controlstate.set_pin(redis, "a", 1)
    await controlstate.set_offline(redis, "b", True)
    await controller.tick()
    assert driver.scaled == {"a": 1, "b": 0}  # offline: the floor drops to 0
    state = await redis.hgetall(keys.CONTROLLER)
    assert state[b"desired:a"] == b"1" and state[b"driver"] == b"recording"
    assert 0 < await redis.ttl(keys.CONTROLLER) <= 5


async def test_restart_requests_are_acted_on_once(redis: Redis) -> None:
    await controlstate.request_restart(redis, "a")  # before the loop started: ignored
    driver = RecordingDriver()
    controller = Controller(BASE, redis, driver, lambda: BASE)
    await controller.start()
    await controller.tick()
    await controlstate.request_restart(redis, "a")
    await controller.tick()
    await controller.tick()
    assert driver.restarted == ["a"]


async def test_reload_adds_removes_and_restarts_only_what_changed(redis: Redis) -> None:
    new = config(
        {"name": "a", "min_workers": 1, "max_workers": 2, "max_concurrency": 2},  # scaling only
        {"name": "c", "capabilities": ["chat"]},
    )
    files = [BASE, new]
    driver = RecordingDriver()
    controller = Controller(BASE, redis, driver, lambda: files[-1])
    await controller.start()
    generation = int(await redis.get(keys.CONFIG_GENERATION))
    number = await controlstate.request_reload(redis)
    await controller.tick()
    status = await controlstate.reload_status(redis)
    assert status.applied == number and status.result == "ok: added c; removed b"
    assert driver.removed == ["b"] and driver.restarted == []
    assert await redis.xinfo_groups(keys.requests_stream("c"))  # its group exists already
    published = json.loads(await redis.get(keys.CONFIG))
    assert [m["name"] for m in published["models"]] == ["a", "c"]
    assert int(await redis.get(keys.CONFIG_GENERATION)) == generation + 1

    files.append(config({"name": "a", "max_concurrency": 3}, {"name": "c"}))
    await controlstate.request_reload(redis)
    await controller.tick()
    assert (await controlstate.reload_status(redis)).result == "ok: restarted a, c"


async def test_a_bad_file_is_refused_and_nothing_changes(redis: Redis) -> None:
    def broken() -> Config:
        raise ConfigError("llmspool.toml: models[a].backend: Field required")

    driver = RecordingDriver()
    controller = Controller(BASE, redis, driver, broken)
    await controller.start()
    await controlstate.request_reload(redis)
    await controller.tick()
    status = await controlstate.reload_status(redis)
    assert status.result.startswith("error: ") and "backend" in status.result
    assert controller.config is BASE and driver.removed == []
