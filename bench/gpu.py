"""The GPU record: llmspool against the same engine served without it, on one GPU.

``scripts/gpu-check.sh`` runs this after the end-to-end tests. Two systems serve the same model
on the same engine, one after the other (never both on the GPU at once):

- **direct**: the engine behind a plain OpenAI server, no queue — vLLM's own OpenAI server for
  the ``vllm`` backend; for ``transformers``, :mod:`bench.direct` around the same backend class
  the worker runs (so the difference is the API, Redis and the worker hop, nothing else);
- **llmspool**: the real API, Redis and one ``llmspool worker`` with that backend.

Each runs closed-loop streamed chat at every concurrency level. The record gives, per level,
TTFT p50 of both and what llmspool adds, and the throughput ratio (llmspool / direct). It writes
``gpu.json`` (raw rows) and ``gpu.md`` into every ``--write`` directory.

``python -m bench.gpu --backend transformers --model DIR --device cuda --write docs``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import RedisServer, Stack, free_port, wait_until

from bench import loadgen, procs
from bench.stats import summarize

MODEL_NAME = "gpu-model"
Row = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What to measure and on which engine."""

    backend: str
    model_dir: str
    device: str = "cuda"
    dtype: str = "bfloat16"
    levels: tuple[int, ...] = (1, 32, 128)
    warmup: float = 2.0
    window: float = 8.0
    tokens: int = 64
    #: why this engine (e.g. "vLLM is not installable here: no network"), for the record
    note: str = ""
    #: a file with the end-to-end tests' summary lines, quoted in the record
    tests_summary: str = ""
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    @property
    def concurrency(self) -> int:
        return max(self.levels)

    def options(self) -> dict[str, Any]:
        """The backend's options, the same for the worker and the direct server."""
        if self.backend == "vllm":
            return {
                "model": self.model_dir,
                "dtype": self.dtype,
                "max_model_len": 1024,
                "gpu_memory_utilization": 0.4,
                "enforce_eager": True,  # no graph capture: device minutes are scarce
                "engine_args": {"seed": 0},
            }
        return {"model": self.model_dir, "device": self.device, "dtype": self.dtype}

    def config(self) -> str:
        """The llmspool models file: one model on this plan's backend."""
        lines = [
            "[[models]]",
            f'name = "{MODEL_NAME}"',
            f'backend = "{self.backend}"',
            f"max_concurrency = {self.concurrency}",
            "context_length = 1024",
            "[models.options]",
        ]
        for key, value in self.options().items():
            if isinstance(value, dict):
                lines.append(f"{key} = {{ {', '.join(f'{k} = {v}' for k, v in value.items())} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"


#: Small instruct models that may already sit in a Hugging Face cache (nothing is downloaded).
CACHED_CANDIDATES = (
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen3-0.6B",
    "HuggingFaceTB/SmolLM2-360M-Instruct",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "google/gemma-3-270m-it",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
)


def cached_model(hub: Path | None = None) -> str | None:
    """The directory of the first candidate in the local Hugging Face cache that has weights
    and a chat template; None when there is none."""
    if hub is None:
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    for repo in CACHED_CANDIDATES:
        for snapshot in sorted((hub / f"models--{repo.replace('/', '--')}").glob("snapshots/*")):
            if _complete(snapshot):
                return str(snapshot)
    return None


def _complete(directory: Path) -> bool:
    has_weights = any(directory.glob("*.safetensors"))
    config = directory / "tokenizer_config.json"
    template = (directory / "chat_template.jinja").exists() or (
        config.exists() and "chat_template" in config.read_text()
    )
    return (directory / "config.json").exists() and has_weights and template


# --------------------------------------------------------------------------- the two systems


def start_direct(plan: Plan, workdir: Path) -> procs.Server:
    """The engine served without llmspool (see the module docstring)."""
    if plan.backend == "vllm":
        opts = plan.options()
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        args += ["--model", plan.model_dir, "--served-model-name", MODEL_NAME]
        args += ["--host", "127.0.0.1", "--port", "{port}", "--dtype", plan.dtype]
        args += ["--max-model-len", str(opts["max_model_len"]), "--seed", "0"]
        args += ["--gpu-memory-utilization", str(opts["gpu_memory_utilization"])]
        args += ["--max-num-seqs", str(plan.concurrency), "--enforce-eager"]
        return procs.start_server("direct", args, workdir, "/health", env=_env())
    args = [sys.executable, "-m", "bench.direct", "--port", "{port}", "--backend", plan.backend]
    args += ["--model", MODEL_NAME, "--options", json.dumps(plan.options())]
    args += ["--max-concurrency", str(plan.concurrency)]
    return procs.start_server("direct", args, workdir, "/health", env=_env())


@dataclass
class Spool:
    """Redis, the API and one worker of the plan's model."""

    plan: Plan
    workdir: Path
    redis: RedisServer | None = None
    stack: Stack | None = None

    def start(self) -> Spool:
        self.redis = RedisServer(free_port(), self.workdir / "redis")
        self.redis.start()
        path = self.workdir / "llmspool.toml"
        path.write_text(self.plan.config())
        self.stack = Stack(self.redis, path, self.workdir, extra_env=_env())
        self.stack.start_api()
        worker = self.stack.start_worker(MODEL_NAME, wait=False)
        stack = self.stack
        # Loading an engine on a GPU can take minutes (vLLM profiles memory first).
        wait_until(
            lambda: stack.registered(worker.pid) or worker.poll() is not None,
            300,
            interval=0.5,
            what=f"the worker (see {self.workdir}/worker-{MODEL_NAME}.log)",
        )
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited: {stack.log(f'worker-{MODEL_NAME}.log')[-3000:]}")
        return self

    @property
    def base_url(self) -> str:
        if self.stack is None:
            raise RuntimeError("not started")
        return self.stack.base_url

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        if self.redis is not None:
            self.redis.stop()


def _env() -> dict[str, str]:
    return {"PYTHONPATH": procs._pythonpath(), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


# --------------------------------------------------------------------------- measuring


async def sweep(name: str, base_url: str, plan: Plan) -> list[Row]:
    """Closed-loop streamed chat at every level; one row per level."""
    # greedy: every request generates the same tokens on both systems
    target = loadgen.Target(base_url, MODEL_NAME, max_tokens=plan.tokens, extra={"temperature": 0})
    rows = []
    async with loadgen.session(limit=plan.concurrency * 2, timeout=300) as http:
        for _ in range(3):  # a fresh engine's first requests pay for lazy set-up: not measured
            warm = await loadgen.request(http, target)
            if warm.error is not None:
                raise RuntimeError(f"{name} failed a warm-up request: {warm.error}")
        for level in plan.levels:
            run = await loadgen.closed_loop(
                lambda: loadgen.request(http, target), level, plan.warmup, plan.window
            )
            row: Row = {"system": name, "level": level, **summarize(run)}
            print(
                f"  {name:<9} c={level:<4} {row['requests']:>5} req {row['errors']} err  "
                f"TTFT p50 {_f(row['ttft_p50'])} ms  {row['tok_per_s']:.0f} tok/s",
                flush=True,
            )
            rows.append(row)
    return rows


def measure(plan: Plan, workdir: Path, rows: list[Row]) -> None:
    """Both systems, one after the other, each started fresh; rows are added as they come, so
    an interrupted run still leaves what it measured."""
    direct = start_direct(plan, workdir)
    try:
        rows += asyncio.run(sweep("direct", direct.base_url, plan))
    finally:
        direct.stop()
    spool = Spool(plan, workdir)
    try:
        spool.start()
        rows += asyncio.run(sweep("llmspool", spool.base_url, plan))
    finally:
        spool.stop()


# --------------------------------------------------------------------------- the record


def compare(rows: Sequence[Row]) -> list[Row]:
    """Per level: both TTFT p50s, what llmspool adds, and the throughput ratio."""
    by = {(r["system"], r["level"]): r for r in rows}
    table = []
    for level in sorted({r["level"] for r in rows}):
        direct, spool = by.get(("direct", level)), by.get(("llmspool", level))
        if direct is None or spool is None:
            continue
        added = _minus(spool["ttft_p50"], direct["ttft_p50"])
        ratio = spool["tok_per_s"] / direct["tok_per_s"] if direct["tok_per_s"] else None
        table.append(
            {
                "level": level,
                "direct_ttft_p50": direct["ttft_p50"],
                "llmspool_ttft_p50": spool["ttft_p50"],
                "added_ttft_ms": added,
                "direct_tok_per_s": direct["tok_per_s"],
                "llmspool_tok_per_s": spool["tok_per_s"],
                "throughput_ratio": ratio,
                "errors": direct["errors"] + spool["errors"],
            }
        )
    return table


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "no NVIDIA GPU (a dry run on the CPU)"
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "vllm"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found[name] = str(getattr(module, "__version__", "?"))
    return found


def markdown(plan: Plan, table: list[Row], meta: dict[str, Any]) -> str:
    engine = "vLLM" if plan.backend == "vllm" else f"transformers on {plan.device}"
    lines = [
        "# The GPU record",
        "",
        f"Written by `scripts/gpu-check.sh` on {plan.started}. Machine: {meta['gpu']}. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        "",
        f"**Engine: {engine}**, backend `{plan.backend}`, model `{meta['model']}` "
        f"({plan.dtype}), {plan.tokens} tokens per streamed chat request.",
    ]
    if plan.note:
        lines += ["", plan.note]
    lines += ["", "## End-to-end tests on this machine", "", *_tests(plan), ""]
    lines += [
        "## llmspool against the same engine without it",
        "",
        _direct_words(plan),
        f"Closed loop at each concurrency: {plan.warmup:g} s warm-up, then {plan.window:g} s "
        "measured. Added TTFT = llmspool's TTFT p50 minus direct's; throughput ratio = llmspool's "
        "generated tokens/s ÷ direct's.",
        "",
        "| concurrency | direct TTFT p50 (ms) | llmspool TTFT p50 (ms) | added TTFT (ms) "
        "| direct tok/s | llmspool tok/s | throughput ratio | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(
            f"| {r['level']} | {_f(r['direct_ttft_p50'])} | {_f(r['llmspool_ttft_p50'])} "
            f"| {_f(r['added_ttft_ms'])} | {_f(r['direct_tok_per_s'], 0)} "
            f"| {_f(r['llmspool_tok_per_s'], 0)} | {_f(r['throughput_ratio'], 2)} "
            f"| {r['errors']} |"
        )
    lines += ["", "Raw rows: [gpu.json](gpu.json).", ""]
    return "\n".join(lines)


def _direct_words(plan: Plan) -> str:
    if plan.backend == "vllm":
        return "Direct: vLLM's own OpenAI server (`vllm.entrypoints.openai.api_server`). "
    return (
        "Direct: the same `transformers` backend class in a plain OpenAI server with no queue "
        "(`bench/direct.py`, in one process with the engine). "
    )


def _tests(plan: Plan) -> list[str]:
    path = Path(plan.tests_summary) if plan.tests_summary else None
    if path is None or not path.exists():
        return ["(not run)"]
    return ["```", *path.read_text().strip().splitlines(), "```"]


def write(plan: Plan, rows: list[Row], directories: Sequence[Path]) -> None:
    table = compare(rows)
    meta = {"gpu": gpu_name(), "versions": versions(), "model": Path(plan.model_dir).name}
    raw = {"plan": asdict(plan), "meta": meta, "comparison": table, "rows": rows}
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "gpu.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
        (directory / "gpu.md").write_text(markdown(plan, table, meta))
        print(f"wrote {directory / 'gpu.md'} and gpu.json", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("vllm", "transformers"), required=True)
    parser.add_argument("--model", required=True, help="the model directory")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--levels", default="1,32,128", help="concurrency levels, comma-separated")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--note", default="")
    parser.add_argument("--tests-summary", default="")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--write", type=Path, action="append", default=[], help="repeatable")
    args = parser.parse_args(argv)
    plan = Plan(
        backend=args.backend,
        model_dir=str(Path(args.model).resolve()),
        device=args.device,
        dtype=args.dtype,
        levels=tuple(int(x) for x in args.levels.split(",")),
        warmup=args.warmup,
        window=args.window,
        tokens=args.tokens,
        note=args.note,
        tests_summary=args.tests_summary,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    try:
        measure(plan, args.workdir, rows)
    except KeyboardInterrupt:  # gpu-check.sh's time limit (SIGINT): keep what was measured
        print("interrupted: writing what was measured", flush=True)
        write(plan, rows, args.write)
        raise SystemExit(130) from None
    write(plan, rows, args.write)


if __name__ == "__main__":
    main()
