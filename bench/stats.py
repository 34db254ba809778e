"""Summaries of a run: percentiles of TTFT, ITL, TPOT and E2E; request and token throughput."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.loadgen import Run


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def summarize(run: Run) -> dict[str, Any]:
    """Latencies (ms) of requests started in the window; throughput of those ended in it."""
    started = run.started()
    ok = [s for s in started if s.ok]
    ttft = [s.ttft for s in ok]
    itl = [gap for s in ok for gap in s.itls()]
    tpot = [t for s in ok if (t := s.tpot) is not None]
    e2e = [s.e2e for s in ok]
    ended = run.ended()
    errors = [s.error for s in started if s.error is not None]
    return {
        "requests": len(started),
        "errors": len(errors),
        "error_sample": errors[0] if errors else None,
        "unfinished": run.unfinished,
        "ttft_p50": _ms(percentile(ttft, 50)),
        "ttft_p90": _ms(percentile(ttft, 90)),
        "ttft_p99": _ms(percentile(ttft, 99)),
        "itl_p50": _ms(percentile(itl, 50)),
        "itl_p99": _ms(percentile(itl, 99)),
        "tpot_p50": _ms(percentile(tpot, 50)),
        "e2e_p50": _ms(percentile(e2e, 50)),
        "e2e_p99": _ms(percentile(e2e, 99)),
        "req_per_s": len(ended) / run.window,
        "tok_per_s": sum(s.tokens for s in ended) / run.window,
        "tokens_total": sum(s.tokens for s in run.samples if s.ok),
        "chunks_per_token": _ratio(sum(len(s.chunks) for s in ok), sum(s.tokens for s in ok)),
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None."""
    present = [v for v in values if v is not None]
    return percentile(present, 50)
