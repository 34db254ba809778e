"""``python -m bench [--profile full|quick|smoke]``: run the suites, write the report.

The full profile writes bench/report.md and bench/plots/ (committed); the others write under
bench/results/<profile>/ so a quick look never replaces the committed report. Raw rows go to
results.json next to the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, suites, tenants
from bench.procs import ROOT

BENCH = ROOT / "bench"
SUITES = ("overhead", "capacity", "real", "batch", "transformers", "tenants")

BATCH_PENDING = (
    "## Batch\n\n**Pending**: the batch API (issue 6) had not landed on main when this harness "
    "was written, so a large batch's throughput and interactive TTFT while it runs are not "
    "measured yet."
)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=sorted(suites.PROFILES), default="full")
    parser.add_argument("--out", type=Path, help="report directory")
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated subset")
    parser.add_argument(
        "--rewrite", action="store_true", help="only redo the report from results.json"
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="replace only the chosen suites' rows in the existing results.json",
    )
    args = parser.parse_args(argv)
    # SIGTERM (a killed `make bench`) exits through the suites' cleanup, which stops every
    # server they started; the default handler would leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    profile = suites.PROFILES[args.profile]
    out = args.out or (BENCH if profile.name == "full" else BENCH / "results" / profile.name)
    out.mkdir(parents=True, exist_ok=True)
    if args.rewrite:
        saved = json.loads((out / "results.json").read_text())
        return report.write(saved["rows"], saved["meta"], out, out / "plots")
    chosen = [s for s in args.suites.split(",") if s]
    return run(profile, chosen, out, add=args.add)


def run(profile: suites.Profile, chosen: list[str], out: Path, add: bool = False) -> Path:
    meta = _meta(profile)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp:
        workdir = Path(tmp)
        for name in chosen:
            rows += _suite(name, profile, workdir)
    meta["elapsed"] = round(time.monotonic() - started)
    if not suites.batch_available():
        meta["batch_note"] = BATCH_PENDING
    if add:
        rows, meta = _added(out / "results.json", rows, chosen, meta)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    path = report.write(rows, meta, out, out / "plots")
    print(f"wrote {path} ({meta['elapsed']} s)")
    return path


def _added(
    path: Path, rows: list[dict[str, Any]], chosen: list[str], meta: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The saved rows with the chosen suites' replaced; the saved meta, noting the addition."""
    saved = json.loads(path.read_text())
    kept = [row for row in saved["rows"] if row["suite"] not in chosen]
    merged = {**saved["meta"], "batch_note": meta.get("batch_note")}
    merged["added"] = (
        f"{', '.join(chosen)} measured again at {meta['date']} ({meta['commit']}, "
        f"profile {meta['profile']}, load average {meta['loadavg']})"
    )
    return kept + rows, merged


def _suite(name: str, profile: suites.Profile, workdir: Path) -> list[dict[str, Any]]:
    print(f"== {name}", flush=True)
    if name == "overhead":
        return suites.overhead(profile, workdir)
    if name == "capacity":
        return suites.capacity(profile, workdir)
    if name == "real" and profile.real_model:
        return suites.real_model(profile, workdir)
    if name == "batch" and suites.batch_available():
        return suites.batch(profile, workdir)
    if name == "transformers" and suites.transformers_available():
        return suites.transformers(profile, workdir)
    if name == "tenants":
        load = tenants.Load(profile.tenant_flood, profile.tenant_window)
        return tenants.suite(load, workdir)
    return []


def _meta(profile: suites.Profile) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "profile": profile.name,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "cpus": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "setup": _setup(profile),
    }


def _setup(profile: suites.Profile) -> str:
    return (
        f"Setup: closed-loop concurrency {list(profile.concurrency)}, Poisson rates "
        f"{list(profile.rates)} req/s (seed {profile.seed}), {profile.reps} repetition(s), "
        f"{profile.warmup} s warm-up + {profile.window} s measured window per run. Overhead "
        f"engine: fake, TTFT {suites.OVERHEAD_TTFT_MS} ms, ITL {suites.OVERHEAD_ITL_MS} ms, "
        f"{suites.OVERHEAD_TOKENS} tokens per streamed chat completion. Capacity engine: fake, "
        f"no delay, {suites.CAPACITY_TOKENS} tokens. llmspool: one API process, one worker, "
        "its own redis-server (no persistence). LiteLLM 1.108.7 proxy (`litellm --model "
        "openai/fake`, one process) in front of A, run up to concurrency "
        f"{suites.LITELLM_LIMITS['closed']:.0f} and {suites.LITELLM_LIMITS['poisson']:.0f} "
        "req/s only: above that it fell so far behind that runs were cut and its backlog spoiled "
        "the runs after them."
    )


if __name__ == "__main__":
    main()
