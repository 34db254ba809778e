"""The control loop: looks at every model's queue at least once a second and acts.

Each tick it reads the control state operators set (pins, offline flags, restart requests), the
registry and each model's backlog; asks the policy how many workers each model should run; and
hands the answer to its driver. It also applies reload requests (a re-read models file) and
publishes what it decided under ``llmspool:controller`` for the command line and the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from llmspool.control.driver import Driver
from llmspool.control.policy import History, Sample, ScalePolicy, decide
from llmspool.shared import controlstate, keys
from llmspool.shared.backlog import queue_stats
from llmspool.shared.config import Config, ModelConfig
from llmspool.shared.controlstate import ModelControl
from llmspool.shared.errors import ConfigError, RegistryUnavailable
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.registry import RedisRegistry, Registry, WorkerInfo
from llmspool.shared.streams import ensure_groups

log = logging.getLogger(__name__)

#: Fields that only change how many workers run: editing them needs no restart.
SCALING_FIELDS = frozenset({"min_workers", "max_workers", "autoscale"})
#: The controller's published state lives this long without a tick.
STATE_TTL_SECONDS = 5


class Controller:
    """Runs the policy for every model through one driver."""

    def __init__(
        self,
        config: Config,
        redis: Redis,
        driver: Driver,
        reload: Callable[[], Config],
        registry: Registry | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.registry = registry or RedisRegistry(redis)
        self.registry_down = False
        self.driver = driver
        self.load_config = reload
        self.histories: dict[str, History] = {}
        self.desired: dict[str, int] = {}
        self.restarts_seen: dict[str, int] = {}
        self.reload_seen = 0

    @property
    def tick_seconds(self) -> float:
        return min(m.autoscale.tick for m in self.config.models)

    async def start(self) -> None:
        """Publish the models in force; ignore restart and reload requests made before now."""
        for name in self.config.names():  # so jobs queued before any API are counted
            await ensure_groups(self.redis, name)
        controls = await controlstate.model_controls(self.redis, self.config.names())
        self.restarts_seen = {name: c.restart for name, c in controls.items()}
        self.reload_seen = (await controlstate.reload_status(self.redis)).requested
        await self.publish_config()

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until ``stopping`` is set; Redis outages are waited out."""
        await self._retrying(self.start, stopping)
        while not stopping.is_set():
            await self._retrying(self.tick, stopping)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.tick_seconds)

    async def _retrying(self, step: Callable[[], Any], stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await step()
            except UNAVAILABLE as exc:
                log.warning("control loop: redis unavailable (%s)", exc)
            except Exception:  # one bad tick must not end the control loop
                log.exception("control loop tick failed")
            else:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)

    async def tick(self) -> None:
        """One look at every model, then at reload requests."""
        now = time.time()
        controls = await controlstate.model_controls(self.redis, self.config.names())
        live = await self._live_workers()
        if live is not None:
            for model in self.config.models:
                mine = [w for w in live if w.model == model.name]
                await self._tick_model(model, controls[model.name], mine, now)
        await self._publish_state()
        await self._check_reload()

    async def _live_workers(self) -> list[WorkerInfo] | None:
        """The registry's workers; None while it cannot be reached: the loop then holds every
        model where it is (scaling blind would start a second set of workers)."""
        try:
            live = await self.registry.live_workers()
        except RegistryUnavailable as exc:
            if not self.registry_down:
                log.warning("control loop: %s; holding worker counts until it is back", exc)
            self.registry_down = True
            return None
        if self.registry_down:
            log.info("control loop: the worker registry is back")
        self.registry_down = False
        return live

    async def _tick_model(
        self, model: ModelConfig, ctl: ModelControl, live: list[WorkerInfo], now: float
    ) -> None:
        stats = await queue_stats(self.redis, model.name)
        policy = ScalePolicy.of(model, offline=ctl.offline)
        history = self.histories.setdefault(model.name, History())
        history.add(Sample(now, stats.backlog), policy.horizon)
        desired = decide(policy, history.samples, now, ctl.pin)
        if desired != self.desired.get(model.name):
            log.info("%s: backlog %d → %d workers", model.name, stats.backlog, desired)
        self.desired[model.name] = desired
        await self.driver.scale(model, desired, live)
        if ctl.restart > self.restarts_seen.get(model.name, 0):
            log.info("%s: rolling restart", model.name)
            await self.driver.restart(model)
        self.restarts_seen[model.name] = ctl.restart

    async def _publish_state(self) -> None:
        mapping: Any = {f"desired:{m}": str(n) for m, n in self.desired.items()}
        mapping.update(driver=self.driver.name, beat=str(time.time()))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.CONTROLLER)
        pipe.hset(keys.CONTROLLER, mapping=mapping)
        pipe.expire(keys.CONTROLLER, STATE_TTL_SECONDS)
        await pipe.execute()

    # ------------------------------------------------------------------ reload

    async def _check_reload(self) -> None:
        status = await controlstate.reload_status(self.redis)
        if status.requested <= self.reload_seen:
            return
        self.reload_seen = status.requested
        try:
            new = self.load_config()
        except ConfigError as exc:
            log.error("reload refused: %s", exc.message)
            await controlstate.record_reload(self.redis, status.requested, f"error: {exc.message}")
            return
        summary = await self.apply(new)
        log.info("reloaded the models file: %s", summary)
        await controlstate.record_reload(self.redis, status.requested, f"ok: {summary}")

    async def apply(self, new: Config) -> str:
        """Move to the models in ``new``: start added ones, stop removed ones, roll changed ones."""
        old = {m.name: m for m in self.config.models}
        added = [m for m in new.models if m.name not in old]
        removed = [name for name in old if name not in new.names()]
        changed = [m for m in new.models if m.name in old and _needs_restart(old[m.name], m)]
        for model in added:
            await ensure_groups(self.redis, model.name)
        for name in removed:
            await self.driver.remove(name)
            self.histories.pop(name, None)
            self.desired.pop(name, None)
        for model in changed:
            await self.driver.restart(model)
        self.config = new
        await self.publish_config()
        return _describe(added, removed, changed)

    async def publish_config(self) -> None:
        """Put the models in force where API processes and the command line read them."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.CONFIG, self.config.model_dump_json())
        pipe.incr(keys.CONFIG_GENERATION)
        await pipe.execute()


def _needs_restart(old: ModelConfig, new: ModelConfig) -> bool:
    return old.model_dump(exclude=set(SCALING_FIELDS)) != new.model_dump(
        exclude=set(SCALING_FIELDS)
    )


def _describe(added: list[ModelConfig], removed: list[str], changed: list[ModelConfig]) -> str:
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("added", [m.name for m in added]),
            ("removed", removed),
            ("restarted", [m.name for m in changed]),
        )
        if names
    ]
    return "; ".join(parts) or "no worker needed a restart"
