"""bench/report.md and its plots, from the result rows of one run.

Every number in a table is the median over repetitions of that run's statistic; ratios and
"added" latencies compare systems measured in the same run, interleaved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.stats import median

Row = dict[str, Any]
Key = tuple[str, str, float]  # system, mode, level

DIRECT, SPOOL, LITELLM = "A direct", "B llmspool", "C litellm"


def aggregate(rows: Iterable[Row], suite: str) -> dict[Key, Row]:
    """Median of every numeric statistic over repetitions, per (system, mode, level)."""
    groups: dict[Key, list[Row]] = defaultdict(list)
    for row in rows:
        if row["suite"] == suite:
            groups[(row["system"], row["mode"], float(row["level"]))].append(row)
    return {key: _median_row(group) for key, group in groups.items()}


def _median_row(group: list[Row]) -> Row:
    out: Row = {"reps": len(group), "errors": sum(r["errors"] for r in group)}
    out["unfinished"] = sum(r["unfinished"] for r in group)
    out["requests"] = sum(r["requests"] for r in group)
    names = {name for r in group for name in r} - set(out)
    for name in names:
        values = [r.get(name) for r in group]
        if all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
        ):
            out[name] = median(values)
    cpu_names = {name for r in group for name in r.get("cpu", {})}
    out["cpu"] = {n: sum(r["cpu"].get(n, 0.0) for r in group) for n in cpu_names}
    out["tokens_total"] = sum(r.get("tokens_total") or 0 for r in group)
    pubs = [r["publishes"] for r in group if r.get("publishes") is not None]
    out["publishes"] = sum(pubs) if pubs else None
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def added(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or b is None else b / a


def table(head: list[str], lines: list[list[str]]) -> str:
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(rows)


def levels(agg: dict[Key, Row], mode: str) -> list[float]:
    return sorted({level for _, m, level in agg if m == mode})


def systems(agg: dict[Key, Row]) -> list[str]:
    return sorted({s for s, _, _ in agg})


LATENCIES = ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "tpot_p50", "e2e_p50", "e2e_p99")


def latency_table(agg: dict[Key, Row], mode: str, label: str) -> str:
    head = [label, "system", "requests", "errors", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99"]
    head += ["TPOT p50", "E2E p50", "E2E p99", "req/s", "tok/s"]
    lines = []
    for level in levels(agg, mode):
        for system in systems(agg):
            r = agg.get((system, mode, level))
            if r is None:
                continue
            stats = [fmt(r[k], 2) for k in LATENCIES]
            rates = [fmt(r["req_per_s"], 1), fmt(r["tok_per_s"], 0)]
            lines.append([fmt(level, 0), system, str(r["requests"]), _errors(r), *stats, *rates])
    return table(head, lines)


def _errors(r: Row) -> str:
    text = str(r["errors"])
    return f"{text} (+{r['unfinished']} cut)" if r.get("unfinished") else text


def overhead_table(agg: dict[Key, Row], mode: str, label: str) -> str:
    head = [label, "system", "added TTFT p50", "added TTFT p99", "added ITL p50"]
    head += ["added ITL p99", "throughput vs A"]
    lines = []
    for level in levels(agg, mode):
        base = agg.get((DIRECT, mode, level))
        if base is None:
            continue
        for system in [s for s in systems(agg) if s != DIRECT]:
            r = agg.get((system, mode, level))
            if r is None:
                continue
            lines.append(
                [fmt(level, 0), system]
                + [fmt(added(base[k], r[k]), 2) for k in ("ttft_p50", "ttft_p99")]
                + [fmt(added(base[k], r[k]), 2) for k in ("itl_p50", "itl_p99")]
                + [fmt(ratio(base["tok_per_s"], r["tok_per_s"]), 3)]
            )
    return table(head, lines)


def cpu_table(agg: dict[Key, Row]) -> str:
    head = ["concurrency", "system", "req/s", "relayed tok/s", "chunks/token", "PUBLISH/token"]
    head += ["CPU s per 1k tokens (per process)", "tokens per API CPU-second"]
    lines = []
    for (system, _, level), r in sorted(agg.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        tokens = r["tokens_total"] or 0
        per_k = ", ".join(
            f"{name} {1000 * sec / tokens:.3f}" for name, sec in sorted(r["cpu"].items()) if tokens
        )
        api = _api_cpu(r)
        pubs = r["publishes"]
        per_token = pubs / tokens if pubs is not None and tokens else None
        lines.append(
            [
                fmt(level, 0),
                system,
                fmt(r["req_per_s"], 1),
                fmt(r["tok_per_s"], 0),
                fmt(r.get("chunks_per_token"), 3),
                fmt(per_token, 3),
                per_k,
                fmt(tokens / api if api else None, 0),
            ]
        )
    return table(head, lines)


def plot_sweep(agg: dict[Key, Row], mode: str, metric: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system in systems(agg):
        xs = [lv for lv in levels(agg, mode) if (system, mode, lv) in agg]
        ys = [agg[(system, mode, x)][metric] for x in xs]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", label=system)
    ax.set_xlabel("concurrency" if mode == "closed" else "offered rate (req/s)")
    if mode == "closed":
        ax.set_xscale("log", base=2)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


PLOTS = [
    ("overhead", "closed", "ttft_p50", "TTFT p50 (ms)", "overhead-ttft.png"),
    ("overhead", "closed", "itl_p50", "ITL p50 (ms)", "overhead-itl.png"),
    ("overhead", "closed", "tok_per_s", "tokens/s", "overhead-throughput.png"),
    ("overhead", "poisson", "ttft_p99", "TTFT p99 (ms)", "poisson-ttft-p99.png"),
    ("capacity", "closed", "tok_per_s", "tokens/s", "capacity-throughput.png"),
]


def write(rows: list[Row], meta: dict[str, Any], out: Path, plots_dir: Path) -> Path:
    """Write report.md under ``out`` and its plots under ``plots_dir``; return the report."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    sections = [_header(meta)]
    over = aggregate(rows, "overhead")
    cap = aggregate(rows, "capacity")
    real = aggregate(rows, "real")
    sections.append(_targets(over, cap, real))
    notes = out / "notes.md"  # the hand-written reading of the committed run
    if notes.exists():
        sections.append(notes.read_text().strip())
    if over:
        sections.append(_overhead(over))
    if cap:
        sections.append(_capacity(cap))
    sections.append(_real(real))
    sections.append(meta.get("batch_note") or _batch([r for r in rows if r["suite"] == "batch"]))
    sections.append(_transformers(aggregate(rows, "transformers")))
    sections.append(_tenants([r for r in rows if r["suite"] == "tenants"]))
    for suite, mode, metric, label, name in PLOTS:
        agg = {"overhead": over, "capacity": cap}[suite]
        if any(m == mode for _, m, _ in agg):
            plot_sweep(agg, mode, metric, label, plots_dir / name)
            rel = (plots_dir / name).relative_to(out)
            sections.append(f"![{label} - {suite}, {mode}]({rel})")
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def _header(meta: dict[str, Any]) -> str:
    lines = [
        "# llmspool benchmark report",
        "",
        "Generated by `make bench` (bench/); do not edit by hand. "
        f"Profile **{meta['profile']}**, {meta['date']}, commit `{meta['commit']}`, "
        f"{meta['cpus']} CPUs, load average at start {meta['loadavg']}, "
        f"run time {meta.get('elapsed', '?')} s.",
        "",
        _machine(meta["loadavg"], meta["cpus"]) + " Ratios compare systems measured in the same "
        "run, interleaved (each repetition visits every level, each level every system in "
        "rotated order). All latencies are in milliseconds and are medians over repetitions of "
        "each run's percentile; the load client (aiohttp, one process) runs on the same machine "
        "and its CPU is part of what every system competes with.",
        "",
        meta.get("setup", ""),
    ]
    if meta.get("added"):
        lines += ["", f"Added later: {meta['added']}."]
    return "\n".join(lines)


def _machine(loadavg: str, cpus: int | None) -> str:
    """What the load average at the start says about the run."""
    try:
        load = float(loadavg.split()[0])
    except (ValueError, IndexError):
        return "**The machine's load at the start is unknown**, so absolute numbers may be noisy."
    if load < (cpus or 1) * 0.75:
        return (
            "**The machine was quiet at the start** (nothing else was running that the load "
            "average shows), but it is a shared virtual machine: absolute numbers still move "
            "from run to run."
        )
    return (
        "**The machine was shared**: other work (test suites, builds) ran on its cores during "
        "this run, so absolute numbers are noisy."
    )


def _get(agg: dict[Key, Row], system: str, mode: str, level: float, metric: str) -> Any:
    row = agg.get((system, mode, level))
    return None if row is None else row.get(metric)


def _targets(over: dict[Key, Row], cap: dict[Key, Row], real: dict[Key, Row]) -> str:
    lines = []
    a_ttft = _get(over, DIRECT, "closed", 1.0, "ttft_p50")
    b_ttft = _get(over, SPOOL, "closed", 1.0, "ttft_p50")
    c_ttft = _get(over, LITELLM, "closed", 1.0, "ttft_p50")
    spool_added = added(a_ttft, b_ttft)
    lines.append(_target("added TTFT p50 at concurrency 1", "≤ 2 ms", spool_added, 2.0, "ms"))
    itl = added(
        _get(over, DIRECT, "closed", 1.0, "itl_p50"), _get(over, SPOOL, "closed", 1.0, "itl_p50")
    )
    lines.append(_target("added ITL p50 at concurrency 1", "≤ 1 ms", itl, 1.0, "ms"))
    tput = ratio(
        _get(over, DIRECT, "closed", 64.0, "tok_per_s"),
        _get(over, SPOOL, "closed", 64.0, "tok_per_s"),
    )
    lines.append(
        _target("throughput at concurrency 64 vs direct", "≥ 0.95", tput, 0.95, "", low=False)
    )
    lite_added = added(a_ttft, c_ttft)
    half = None if lite_added is None else lite_added / 2
    lines.append(
        _target(
            "added TTFT vs LiteLLM's (c=1)", f"≤ half ({fmt(half, 2)} ms)", spool_added, half, "ms"
        )
    )
    one_api = [r for (s, _, _), r in cap.items() if s == SPOOL]
    relayed = max((r["tok_per_s"] for r in one_api), default=None)
    lines.append(
        _target("relayed tokens/s per API process", "≥ 50000", relayed, 50000, "", low=False)
    )
    per_cpu = max((_per_api_cpu(r) or 0 for r in one_api), default=None)
    lines.append(
        _target(
            "relayed tokens per API CPU-second (what one API process relays with a core of "
            "its own)",
            "≥ 50000",
            per_cpu or None,
            50000,
            "",
            low=False,
        )
    )
    real_ratio = ratio(
        _real_stat(real, "llama-cpp-python server", "tok_per_s"),
        _real_stat(real, "llmspool (llama_cpp worker)", "tok_per_s"),
    )
    lines.append(
        _target(
            "real model tokens/s vs llama-cpp-python server",
            "≥ 0.95",
            real_ratio,
            0.95,
            "",
            low=False,
        )
    )
    head = ["target", "goal", "measured", "met"]
    return "## Targets\n\n" + table(head, lines)


def _target(
    name: str, goal: str, value: float | None, bound: float | None, unit: str, low: bool = True
) -> list[str]:
    if value is None or bound is None:
        return [name, goal, "not measured", "-"]
    met = value <= bound if low else value >= bound
    return [
        name,
        goal,
        f"{fmt(value, 3 if not unit else 2)} {unit}".strip(),
        "yes" if met else "**no**",
    ]


def _real_stat(real: dict[Key, Row], system: str, metric: str) -> Any:
    return _get(real, system, "sequential", 1.0, metric)


def _overhead(agg: dict[Key, Row]) -> str:
    parts = [
        "## Overhead: the same fake engine served directly (A), through llmspool (B), "
        "through LiteLLM in front of A (C)",
        "### Closed loop (concurrency sweep)",
        overhead_table(agg, "closed", "concurrency"),
        latency_table(agg, "closed", "concurrency"),
    ]
    if levels(agg, "poisson"):
        parts += [
            "### Open loop (Poisson arrivals, seeded)",
            overhead_table(agg, "poisson", "rate/s"),
            latency_table(agg, "poisson", "rate/s"),
        ]
    parts += [
        "### CPU per component",
        cpu_table({k: v for k, v in agg.items() if k[1] == "closed"}),
    ]
    return "\n\n".join(parts)


def _capacity(agg: dict[Key, Row]) -> str:
    return "\n\n".join(
        [
            "## Capacity: zero-delay engine, one API process and one worker",
            "Coalescing ablation: `B llmspool` runs the default `coalesce_ms`, the other row "
            "`LLMSPOOL_COALESCE_MS=0` (one frame per token).",
            cpu_table(agg),
            latency_table(agg, "closed", "concurrency"),
        ]
    )


def _real(agg: dict[Key, Row]) -> str:
    if not agg:
        return "## Real model\n\nNot measured in this run."
    head = ["system", "requests", "errors", "TTFT p50", "TTFT p99", "decode tok/s (median)"]
    head += ["E2E tok/s (median)", "E2E p50"]
    lines = []
    for system in systems(agg):
        r = agg[(system, "sequential", 1.0)]
        lines.append(
            [
                system,
                str(r["requests"]),
                str(r["errors"]),
                fmt(r["ttft_p50"], 2),
                fmt(r["ttft_p99"], 2),
                fmt(r.get("decode_tok_per_s"), 1),
                fmt(r["tok_per_s"], 1),
                fmt(r["e2e_p50"], 1),
            ]
        )
    return "\n\n".join(
        [
            "## Real model: gemma-3-270m (Q4_K_M), llmspool vs llama-cpp-python's own server",
            "Same GGUF file, 2 threads, n_ctx 2048, `/v1/completions`, 32 tokens, temperature 0, "
            "one request at a time, systems alternating. Concurrency 1 only: llama-cpp-python's "
            "server interrupts a running stream when another request arrives (of 8 concurrent "
            "streams 7 came back empty, see docs), so it cannot be compared under concurrency.",
            table(head, lines),
        ]
    )


def _batch(rows: list[Row]) -> str:
    if not rows:
        return "## Batch\n\nNot measured in this run."
    runs = {r["mode"]: r for r in rows}
    summary = runs.get("batch", {})
    head = ["interactive, concurrency 4", "requests", "TTFT p50", "TTFT p99", "ITL p50", "E2E p50"]
    lines = [
        [
            mode,
            str(r["requests"]),
            fmt(r["ttft_p50"], 2),
            fmt(r["ttft_p99"], 2),
            fmt(r["itl_p50"], 2),
            fmt(r["e2e_p50"], 1),
        ]
        for mode, r in runs.items()
        if mode != "batch"
    ]
    return "\n\n".join(
        [
            "## Batch: a large batch, and interactive requests while it runs",
            f"A batch of {fmt(summary.get('level'), 0)} chat lines (fake engine, overhead pace, "
            f"32 tokens each) on one worker with 64 slots: status {summary.get('status')}, "
            f"{summary.get('completed')} completed, {summary.get('failed')} failed, in "
            f"{fmt(summary.get('seconds'), 1)} s: **{fmt(summary.get('lines_per_s'), 1)} "
            f"lines/s**, {fmt(summary.get('tok_per_s'), 0)} tokens/s.",
            table(head, lines),
        ]
    )


BATCHED, PER_JOB = "batched decode loop", "one generate thread per job"


def _transformers(agg: dict[Key, Row]) -> str:
    if not agg:
        return "## Transformers batching\n\nNot measured in this run."
    head = ["concurrency", f"{PER_JOB} tok/s", f"{BATCHED} tok/s", "batched / per job"]
    head += ["TTFT p50 per job", "TTFT p50 batched", "ITL p50 per job", "ITL p50 batched"]
    lines = []
    for level in levels(agg, "closed"):
        old, new = agg.get((PER_JOB, "closed", level)), agg.get((BATCHED, "closed", level))
        if old is None or new is None:
            continue
        lines.append(
            [fmt(level, 0), fmt(old["tok_per_s"], 0), fmt(new["tok_per_s"], 0)]
            + [fmt(ratio(old["tok_per_s"], new["tok_per_s"]), 2)]
            + [fmt(r[k], 2) for k in ("ttft_p50", "itl_p50") for r in (old, new)]
        )
    return "\n\n".join(
        [
            "## Transformers batching: the tiny Llama on the CPU, batched vs one thread per job",
            "The transformers worker on the tests' tiny random Llama (2 layers, hidden size 128, "
            "float32), one torch thread (`OMP_NUM_THREADS=1`), `max_concurrency` 8, streamed "
            "chat completions of 64 tokens at temperature 0, closed loop through one API "
            "process and Redis. `batching = false` is the path before batching (one "
            "`model.generate` thread per job). Goal: aggregate tokens/s at concurrency 8 at "
            "least 3x the per-job path's.",
            table(head, lines),
            latency_table(agg, "closed", "concurrency"),
        ]
    )


def _tenants(rows: list[Row]) -> str:
    """Key B's TTFT alone and during key A's flood, per system; the weighted shares."""
    if not rows:
        return "## Tenants: one key's flood and another key's trickle\n\nNot measured in this run."
    runs = {(r["system"], r["mode"]): r for r in rows}
    names = list(dict.fromkeys(r["system"] for r in rows if r["mode"] != "weights"))
    head = ["system", "B alone p50", "B alone p99", "B during flood p50", "B during flood p99"]
    head += ["p99 flood / alone", "B ok"]
    lines = []
    for name in names:
        alone, flood = runs.get((name, "alone"), {}), runs.get((name, "flood"), {})
        ok = f"{flood.get('requests', 0) - flood.get('errors', 0)}/{flood.get('requests', 0)}"
        lines.append(
            [
                name,
                fmt(alone.get("ttft_p50"), 0),
                fmt(alone.get("ttft_p99"), 0),
                fmt(flood.get("ttft_p50"), 0),
                fmt(flood.get("ttft_p99"), 0),
                fmt(ratio(alone.get("ttft_p99"), flood.get("ttft_p99")), 2),
                ok,
            ]
        )
    flood = next((r for r in rows if r["mode"] == "flood"), {})
    alone = next((r for r in rows if r["mode"] == "alone"), {})
    parts = [
        "## Tenants: one key's flood and another key's trickle",
        "Fake engine, one worker with max_concurrency 4, TTFT 50 ms, ITL 20 ms, 32 tokens "
        "(about 6 requests/s in all); keys on. Key B sends one streamed request a second for "
        f"{alone.get('requests', '-')} s, alone and again while key A has "
        f"{flood.get('level', '-')} requests in flight (sent at once, 3 s before B starts). "
        "TTFT in ms as B's client saw it. Before fair turns the model's stream was first in, "
        "first out: B waited behind A's whole backlog.",
        table(head, lines),
        "Goal: B's p99 during the flood within 2x of B alone. With fair turns B's request is "
        "the next one taken, but it still waits for one of the worker's 4 slots to free (A's "
        "jobs are not preempted): a job takes about 0.67 s, so a slot frees every ~170 ms, "
        "which bounds what turns alone can do against a 50-100 ms TTFT; the run's machine load "
        "(see the load average above) adds the rest.",
    ]
    weights = next((r for r in rows if r["mode"] == "weights"), None)
    if weights is not None:
        parts.append(
            f"Weights: keys of weight 3 and 1 each sent {weights['level']} requests at once; in "
            f"the first {fmt(weights['seconds'], 0)} s (both still backlogged) they got "
            f"{weights['tokens_heavy']} and {weights['tokens_light']} tokens: "
            f"**{fmt(weights['ratio'], 2)} : 1** (goal 3 : 1 ± 10 %)."
        )
    return "\n\n".join(parts)


def _api_cpu(r: Row) -> float:
    return sum(sec for name, sec in r["cpu"].items() if name.startswith("api"))


def _per_api_cpu(r: Row) -> float | None:
    api = _api_cpu(r)
    return r["tokens_total"] / api if api and r["tokens_total"] else None
