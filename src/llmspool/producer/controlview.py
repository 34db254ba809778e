"""What an API process follows of the control state: offline models and the models in force.

Refreshed in the background about once a second (one pipelined round trip), so a request pays
nothing for it: an offline model answers 503 within a second of ``llmspool models offline``, and
a reloaded models file (published by the control loop) is adopted without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from llmspool.shared import controlstate, keys
from llmspool.shared.config import Config, Table, parse_config
from llmspool.shared.errors import ConfigError
from llmspool.shared.redis import UNAVAILABLE

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0


class ControlView:
    """A cached view of the control state, kept fresh by one background task."""

    def __init__(
        self,
        redis: Redis,
        models: Callable[[], list[str]],
        adopt: Callable[[Config], Awaitable[None]],
    ) -> None:
        self.redis = redis
        self.models = models
        self.adopt = adopt
        self.offline: frozenset[str] = frozenset()
        self.generation: int | None = None
        self._task: asyncio.Task[None] | None = None

    def is_offline(self, model: str) -> bool:
        return model in self.offline

    async def start(self) -> None:
        with contextlib.suppress(*UNAVAILABLE):
            self.generation = await self._generation()
            await self.refresh()
        self._task = asyncio.create_task(self._follow(), name="control-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Read the offline flags now, and adopt a newly published models file."""
        controls = await controlstate.model_controls(self.redis, self.models())
        self.offline = frozenset(name for name, c in controls.items() if c.offline)
        generation = await self._generation()
        if generation is not None and generation != self.generation:
            self.generation = generation
            await self._adopt_published()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except UNAVAILABLE as exc:
                log.warning("control view: redis unavailable (%s)", exc)

    async def _generation(self) -> int | None:
        value: Any = await self.redis.get(keys.CONFIG_GENERATION)
        return int(value) if value is not None else None

    async def _adopt_published(self) -> None:
        raw: Any = await self.redis.get(keys.CONFIG)
        if raw is None:
            return
        try:
            config = parse_config(_json(raw), source="published models file")
        except ConfigError as exc:
            log.error("ignoring the published models file: %s", exc.message)
            return
        await self.adopt(config)


def _json(raw: bytes | str) -> Table:
    data: Table = json.loads(raw)
    return data
