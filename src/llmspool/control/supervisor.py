"""The local process supervisor: keeps each model's pool of ``llmspool worker`` processes at
its desired size, never above its maximum (and the ``llmspool batch-worker`` running the batch
lifecycle), restarts crashed workers with backoff, rolls a pool over to fresh workers on request,
and stops them cleanly.

Every child stays in the supervisor's process group (no new sessions), so stopping the group
stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
_CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)

#: The pool name of the arq worker that runs the batch lifecycle (not a valid model name).
BATCH_POOL = "<batch-worker>"


def llmspool_command(*args: str) -> list[str]:
    """Run llmspool with this interpreter, whatever PATH says."""
    return [sys.executable, "-m", "llmspool", *args]


CommandFactory = Callable[[str], Sequence[str]]


def worker_command(model: str) -> Sequence[str]:
    return llmspool_command("worker", "--model", model)


@dataclass
class Member:
    """One worker process of a pool."""

    process: asyncio.subprocess.Process
    generation: int
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Pool:
    """The worker processes of one model.

    ``ready`` holds the pids that registered (the control loop fills it from the registry); a
    rolling restart stops an old worker only once every new one is ready, and starts the new one
    first while the pool is below ``maximum``.
    """

    model: str
    desired: int
    env: dict[str, str]
    maximum: int = 1
    command: CommandFactory = worker_command
    members: list[Member] = field(default_factory=list)
    generation: int = 0
    ready: set[int] = field(default_factory=set)
    failures: int = 0
    next_start: float = 0.0
    restarts: int = 0
    surged: bool = False

    @property
    def processes(self) -> list[asyncio.subprocess.Process]:
        return [m.process for m in self.members]

    def active(self) -> list[Member]:
        """Running members not asked to stop."""
        return [m for m in self.members if not m.stopping and m.process.returncode is None]

    def restart(self) -> None:
        """Replace every current worker, one at a time, without losing capacity if possible."""
        self.generation += 1

    async def reconcile(self) -> None:
        """Reap exited workers, stop extra ones, roll old ones, start missing ones."""
        self._reap()
        self._note_ready()
        active = self.active()
        extra = len(active) - self.desired - (1 if self.surged else 0)
        if extra > 0:
            self._stop_extra(active, extra)
        else:
            await self._roll(active)
        await self._fill()

    def _stop_extra(self, active: list[Member], extra: int) -> None:
        # old generations first, then the youngest (the least likely to be busy)
        order = sorted(active, key=lambda m: (m.generation, -m.started))
        for member in order[:extra]:
            self._stop(member)
        self.surged = False

    async def _roll(self, active: list[Member]) -> None:
        old = [m for m in active if m.generation < self.generation]
        if not old:
            self.surged = False
            return
        if any(m.stopping for m in self.members) or not self._new_ready(active):
            return
        if not self.surged and len(self.members) < self.maximum:
            await self._start_one()
            self.surged = True
            return
        self._stop(old[0])
        self.surged = False

    def _new_ready(self, active: list[Member]) -> bool:
        return all(m.pid in self.ready for m in active if m.generation == self.generation)

    async def _fill(self) -> None:
        missing = self.desired - len(self.active())
        room = self.maximum - len(self.members)
        for _ in range(min(missing, room)):
            if time.monotonic() < self.next_start:
                return
            await self._start_one()

    def _reap(self) -> None:
        for member in [m for m in self.members if m.process.returncode is not None]:
            self.members.remove(member)
            if member.process.returncode not in _CLEAN_EXITS:
                self._crashed(member.process.returncode)

    def _crashed(self, code: int | None) -> None:
        self.failures += 1
        self.restarts += 1
        delay = min(BACKOFF_START * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.next_start = time.monotonic() + delay
        log.warning("worker of %s exited with %s; restarting in %.1fs", self.model, code, delay)

    def _note_ready(self) -> None:
        if any(m.pid in self.ready for m in self.active()):
            self.failures = 0  # a worker came up: the next crash starts the backoff afresh

    def _stop(self, member: Member) -> None:
        member.stopping = True
        _signal(member.process, signal.SIGTERM)

    async def _start_one(self) -> None:
        process = await asyncio.create_subprocess_exec(*self.command(self.model), env=self.env)
        self.members.append(Member(process, self.generation))
        log.info("started worker of %s (pid %d)", self.model, process.pid)

    async def stop(self, timeout: float) -> None:
        for member in self.members:
            _signal(member.process, signal.SIGTERM)
        await _wait_all(self.processes, timeout)


class Supervisor:
    """Runs the API and each model's worker pool until told to stop."""

    def __init__(
        self, env: dict[str, str], api: bool = True, command: CommandFactory = worker_command
    ) -> None:
        self.env = {**os.environ, **env}
        self.api_enabled = api
        self.command = command
        self.api: asyncio.subprocess.Process | None = None
        self.pools: dict[str, Pool] = {}
        self._stopping = asyncio.Event()

    def pool(self, model: str) -> Pool:
        return self.pools.setdefault(model, Pool(model, 0, self.env, command=self.command))

    def set_desired(self, model: str, count: int, maximum: int | None = None) -> None:
        """Run ``count`` workers of ``model`` (never more than ``maximum``)."""
        pool = self.pool(model)
        pool.maximum = max(count, 1) if maximum is None else maximum
        pool.desired = min(count, pool.maximum)

    def run_service(self, name: str, *args: str) -> None:
        """Keep one ``llmspool ARGS`` process running (restarted like a worker)."""
        self.pools[name] = Pool(name, 1, self.env, command=lambda _: llmspool_command(*args))

    def set_ready(self, model: str, pids: set[int]) -> None:
        self.pool(model).ready = pids

    def restart(self, model: str) -> None:
        self.pool(model).restart()

    def running(self, model: str) -> int:
        pool = self.pools.get(model)
        return len(pool.active()) if pool else 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self, tick: float = 0.25) -> None:
        if self.api_enabled:
            self.api = await asyncio.create_subprocess_exec(*llmspool_command("api"), env=self.env)
        while not self._stopping.is_set():
            if self.api is not None and self.api.returncode is not None:
                log.error("the API exited with %s; stopping", self.api.returncode)
                break
            await self.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), tick)

    async def reconcile(self) -> None:
        """One pass over every pool; drops pools of removed models once they are empty."""
        for name, pool in list(self.pools.items()):
            await pool.reconcile()
            if pool.desired == 0 and pool.maximum == 0 and not pool.members:
                del self.pools[name]

    async def stop(self, timeout: float) -> None:
        """Stop the API first (no new requests), then drain the workers."""
        if self.api is not None and self.api.returncode is None:
            _signal(self.api, signal.SIGTERM)
        await asyncio.gather(*(pool.stop(timeout) for pool in self.pools.values()))
        if self.api is not None:
            await _wait_all([self.api], timeout)


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


async def _wait_all(processes: list[asyncio.subprocess.Process], timeout: float) -> None:
    waits = [asyncio.ensure_future(p.wait()) for p in processes]
    if not waits:
        return
    _, late = await asyncio.wait(waits, timeout=timeout)
    if late:
        for process in processes:
            if process.returncode is None:
                _signal(process, signal.SIGKILL)
        await asyncio.wait(late, timeout=5)
