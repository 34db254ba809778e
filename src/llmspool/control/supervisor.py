"""The local process supervisor: keeps each model's pool of ``llmspool worker`` processes at
its desired size (and the ``llmspool batch-worker`` running the batch lifecycle), restarts
crashed workers with backoff, and stops them cleanly.

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
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0

#: The pool name of the arq worker that runs the batch lifecycle (not a valid model name).
BATCH_POOL = "<batch-worker>"


def llmspool_command(*args: str) -> list[str]:
    """Run llmspool with this interpreter, whatever PATH says."""
    return [sys.executable, "-m", "llmspool", *args]


@dataclass
class Pool:
    """The worker processes of one model."""

    model: str
    desired: int
    env: dict[str, str]
    #: the llmspool command of each process; empty: ``worker --model <model>``
    args: tuple[str, ...] = ()
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    failures: int = 0
    next_start: float = 0.0
    restarts: int = 0

    def alive(self) -> list[asyncio.subprocess.Process]:
        return [p for p in self.processes if p.returncode is None]

    async def reconcile(self) -> None:
        """Reap exited workers, start missing ones (after backoff), stop extra ones."""
        self._reap()
        alive = self.alive()
        if len(alive) < self.desired and time.monotonic() >= self.next_start:
            await self._start_one()
        for process in alive[self.desired :]:
            _signal(process, signal.SIGTERM)

    def _reap(self) -> None:
        for process in [p for p in self.processes if p.returncode is not None]:
            self.processes.remove(process)
            if process.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                self.failures += 1
                self.restarts += 1
                delay = min(BACKOFF_START * 2 ** (self.failures - 1), BACKOFF_MAX)
                self.next_start = time.monotonic() + delay
                log.warning(
                    "worker of %s exited with %s; restarting in %.1fs",
                    self.model,
                    process.returncode,
                    delay,
                )

    async def _start_one(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *llmspool_command(*(self.args or ("worker", "--model", self.model))), env=self.env
        )
        self.processes.append(process)
        log.info("started worker of %s (pid %d)", self.model, process.pid)

    async def stop(self, timeout: float) -> None:
        for process in self.alive():
            _signal(process, signal.SIGTERM)
        await _wait_all(self.processes, timeout)


class Supervisor:
    """Runs the API and each model's worker pool until told to stop."""

    def __init__(self, env: dict[str, str], api: bool = True) -> None:
        self.env = {**os.environ, **env}
        self.api_enabled = api
        self.api: asyncio.subprocess.Process | None = None
        self.pools: dict[str, Pool] = {}
        self._stopping = asyncio.Event()

    def set_desired(self, model: str, count: int, args: tuple[str, ...] = ()) -> None:
        pool = self.pools.setdefault(model, Pool(model, count, self.env, args))
        pool.desired = count

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self, tick: float = 0.5) -> None:
        if self.api_enabled:
            self.api = await asyncio.create_subprocess_exec(*llmspool_command("api"), env=self.env)
        while not self._stopping.is_set():
            if self.api is not None and self.api.returncode is not None:
                log.error("the API exited with %s; stopping", self.api.returncode)
                break
            for pool in self.pools.values():
                await pool.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), tick)

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
