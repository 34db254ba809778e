"""The tenants suite: one API key floods a model while another sends one request a second.

Engine: fake, one worker with ``max_concurrency`` 4, TTFT 50 ms, ITL 20 ms, 32 tokens (about
0.67 s a request, 6 requests/s in all). Keys are on. For llmspool as it was before fair turns
(the code before :data:`FAIR_SUBJECT`) and as it is, side by side:

- key B alone: one streamed request a second for ``window`` seconds: its TTFT;
- the same while key A has ``flood`` requests in flight (sent at once, a few seconds before B
  starts): B's TTFT. Before fair turns B waits behind A's whole backlog; with them, for one turn;
- weights (llmspool now only): keys of weights 3 and 1 each flood the model; the tokens each got
  while both were backlogged.

Between runs the flood's requests are cancelled (their connections closed) and the queue is
left to drain. Rows: ``system`` (before / now), ``mode`` (alone, flood, weights).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import loadgen, procs
from bench.stats import percentile
from llmspool.shared import credentials
from llmspool.shared.backlog import queue_stats

Row = dict[str, Any]

TTFT_MS = 50.0
ITL_MS = 20.0
TOKENS = 32
CONCURRENCY = 4
#: The flood must fit under the queue limit, or the API refuses it (429) before fairness matters.
MODEL = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = {concurrency}
queue_limit = 20000
[models.options]
ttft_ms = {ttft}
itl_ms = {itl}
"""

#: llmspool before the commit with this subject served a model's queue first in, first out.
FAIR_SUBJECT = "Fair turns between tenants inside a model's queue"
BEFORE = "llmspool before fair turns"
NOW = "llmspool"
#: Seconds the flood gets to reach the queue before key B starts.
SETTLE = 3.0


@dataclass(frozen=True)
class Load:
    """How big the flood is and how long B trickles."""

    flood: int
    window: int


def suite(load: Load, workdir: Path) -> list[Row]:
    """Run every system; rows for the report."""
    rows: list[Row] = []
    for name, env in _systems(workdir):
        spool = procs.Llmspool(workdir / name.replace(" ", "-"), _config(), "fake", env=env)
        with _running(spool.start()):
            rows += asyncio.run(_measure(name, spool, load))
    return [{**row, "suite": "tenants"} for row in rows]


def _systems(workdir: Path) -> list[tuple[str, dict[str, str]]]:
    found = [(NOW, {"LLMSPOOL_AUTH": "on"})]
    before = procs.commit_before(FAIR_SUBJECT)
    if before is not None:
        src = procs.source_at(before, workdir / "before-fair-turns")
        path = f"{src}:{procs.ROOT}"
        found.insert(0, (BEFORE, {"LLMSPOOL_AUTH": "on", "PYTHONPATH": path}))
    return found


def _config() -> str:
    return MODEL.format(concurrency=CONCURRENCY, ttft=TTFT_MS, itl=ITL_MS)


@contextlib.contextmanager
def _running(spool: procs.Llmspool) -> Iterator[None]:
    try:
        yield
    finally:
        spool.stop()


async def _measure(name: str, spool: procs.Llmspool, load: Load) -> list[Row]:
    redis = Redis.from_url(spool.redis.url if spool.redis else "")
    try:
        flooder, trickler = await _key(redis), await _key(redis)
        rows = [await _trickle_run(name, spool, redis, trickler, load, None)]
        rows.append(await _trickle_run(name, spool, redis, trickler, load, flooder))
        if name == NOW:
            rows.append(await _weights(name, spool, redis, load))
        return rows
    finally:
        await redis.aclose()


async def _key(redis: Redis, weight: float = 1.0) -> str:
    secret, _ = await credentials.create(redis, weight=weight)
    return secret


def _target(spool: procs.Llmspool, key: str) -> loadgen.Target:
    return loadgen.Target(spool.base_url, "fake", max_tokens=TOKENS, api_key=key)


async def _trickle_run(
    name: str, spool: procs.Llmspool, redis: Redis, key: str, load: Load, flooder: str | None
) -> Row:
    timeout = load.flood * (TTFT_MS + TOKENS * ITL_MS) / 1000 / CONCURRENCY + 120
    async with loadgen.session(limit=load.flood + 64, timeout=timeout) as http:
        flood = _flood(http, _target(spool, flooder), load.flood) if flooder else []
        if flood:
            await asyncio.sleep(SETTLE)
        started = time.perf_counter()
        samples = await _one_a_second(http, _target(spool, key), load.window)
        await _cancel(flood)
    await _drained(redis)
    mode = "flood" if flooder else "alone"
    print(f"  {name:<28} {mode:<6} {_fmt_ttft(samples)}", flush=True)
    return _row(name, mode, load, samples, time.perf_counter() - started)


def _flood(http: aiohttp.ClientSession, target: loadgen.Target, n: int) -> list[asyncio.Task[Any]]:
    return [asyncio.create_task(loadgen.request(http, target)) for _ in range(n)]


async def _one_a_second(
    http: aiohttp.ClientSession, target: loadgen.Target, seconds: int
) -> list[loadgen.Sample]:
    tasks = []
    for _ in range(seconds):
        tasks.append(asyncio.create_task(loadgen.request(http, target)))
        await asyncio.sleep(1.0)
    return list(await asyncio.gather(*tasks))


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Close the flood's connections: the API cancels what is still queued."""
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


async def _drained(redis: Redis, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await queue_stats(redis, "fake")).backlog == 0:
            return
        await asyncio.sleep(0.5)


def _row(name: str, mode: str, load: Load, samples: list[loadgen.Sample], wall: float) -> Row:
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft * 1000 for s in ok]
    return {
        "system": name,
        "mode": mode,
        "level": load.flood if mode == "flood" else 0,
        "rep": 0,
        "wall": wall,
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "ttft_max": max(ttft) if ttft else None,
    }


def _fmt_ttft(samples: list[loadgen.Sample]) -> str:
    ttft = [s.ttft * 1000 for s in samples if s.ok]
    p50, p99 = percentile(ttft, 50), percentile(ttft, 99)
    return f"{len(ttft)}/{len(samples)} ok, TTFT p50 {p50 or 0:.0f} ms, p99 {p99 or 0:.0f} ms"


async def _weights(name: str, spool: procs.Llmspool, redis: Redis, load: Load) -> Row:
    """Keys of weights 3 and 1 both keep the model backlogged for ``window`` seconds: the
    tokens each got in that time."""
    heavy, light = await _key(redis, 3.0), await _key(redis, 1.0)
    each = 10 * load.window  # more than the model serves in the window: both stay backlogged
    async with loadgen.session(limit=2 * each + 16, timeout=load.window + 300) as http:
        floods = {
            "heavy": _flood(http, _target(spool, heavy), each),
            "light": _flood(http, _target(spool, light), each),
        }
        await asyncio.sleep(SETTLE + load.window)
        tokens = {who: _tokens_done(tasks) for who, tasks in floods.items()}
        await _cancel([t for tasks in floods.values() for t in tasks])
    await _drained(redis)
    ratio = tokens["heavy"] / tokens["light"] if tokens["light"] else None
    print(f"  {name:<28} weights 3:1 -> tokens {tokens} (ratio {ratio})", flush=True)
    return {
        "system": name,
        "mode": "weights",
        "level": each,
        "rep": 0,
        "tokens_heavy": tokens["heavy"],
        "tokens_light": tokens["light"],
        "ratio": ratio,
        "seconds": SETTLE + load.window,
    }


def _tokens_done(tasks: list[asyncio.Task[Any]]) -> int:
    done = [t.result() for t in tasks if t.done() and not t.cancelled()]
    return sum(sample.tokens for sample in done if sample.ok)
