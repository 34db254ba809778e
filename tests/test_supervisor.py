"""The local pool: bounds, crash backoff and rolling restarts, on stand-in processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from llmspool.control.supervisor import Pool


def sleeper(_: str) -> list[str]:
    return ["sleep", "60"]


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool("m", 0, dict(os.environ), maximum=3, command=sleeper)
    yield pool
    await pool.stop(5)


async def settle(pool: Pool, rounds: int = 3) -> None:
    for _ in range(rounds):
        await pool.reconcile()
        await asyncio.sleep(0.05)


async def wait_exits(pool: Pool) -> None:
    for _ in range(200):
        if all(m.process.returncode is not None for m in pool.members if m.stopping):
            return
        await asyncio.sleep(0.02)


async def test_grows_at_once_and_never_above_maximum(pool: Pool) -> None:
    pool.desired = 5
    await pool.reconcile()
    assert len(pool.active()) == 3  # all missing workers start in one pass, capped at max


async def test_shrinks_youngest_first(pool: Pool) -> None:
    pool.desired = 3
    await pool.reconcile()
    first = pool.members[0].pid
    pool.desired = 1
    await pool.reconcile()
    assert [m.pid for m in pool.active()] == [first]
    await wait_exits(pool)
    await pool.reconcile()
    assert len(pool.members) == 1


async def test_crash_is_restarted_after_backoff(pool: Pool) -> None:
    pool.desired = 1
    await pool.reconcile()
    victim = pool.members[0].pid
    os.kill(victim, signal.SIGKILL)
    await pool.members[0].process.wait()
    await pool.reconcile()
    assert pool.restarts == 1 and pool.failures == 1 and not pool.members  # backing off
    await asyncio.sleep(0.6)
    await pool.reconcile()
    assert len(pool.active()) == 1 and pool.members[0].pid != victim
    pool.ready = {pool.members[0].pid}
    await pool.reconcile()
    assert pool.failures == 0  # a worker that came up resets the backoff


async def test_rolling_restart_surges_and_waits_for_readiness(pool: Pool) -> None:
    pool.desired = 2
    await pool.reconcile()
    old = {m.pid for m in pool.members}
    pool.ready = set(old)
    pool.restart()
    await pool.reconcile()
    assert len(pool.members) == 3 and pool.surged  # one new worker first, below max
    await settle(pool)
    assert len(pool.active()) == 3  # no old one stops before the new one is ready
    for _ in range(10):
        pool.ready |= {m.pid for m in pool.members}
        await pool.reconcile()
        await wait_exits(pool)
        await pool.reconcile()
        if not old & {m.pid for m in pool.members}:
            break
    assert len(pool.active()) == 2 and not old & {m.pid for m in pool.active()}


async def test_rolling_restart_at_maximum_stops_one_before_starting_one(pool: Pool) -> None:
    pool.maximum = pool.desired = 2
    await pool.reconcile()
    old = {m.pid for m in pool.members}
    pool.ready = set(old)
    pool.restart()
    await pool.reconcile()
    assert len(pool.members) == 2 and len(pool.active()) == 1  # never above max
    for _ in range(10):
        await wait_exits(pool)
        await pool.reconcile()
        assert len([m for m in pool.members if m.process.returncode is None]) <= 2
        pool.ready |= {m.pid for m in pool.members}
        if not old & {m.pid for m in pool.members}:
            break
    await pool.reconcile()
    assert len(pool.active()) == 2 and not old & {m.pid for m in pool.active()}
