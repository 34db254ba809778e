"""Smoke test of the benchmark harness (bench/): it measures, summarizes and reports.

Never a timed assertion: only that requests succeed, statistics exist and the report is written.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest

from tests.helpers import Stack

pytest.importorskip("aiohttp")
pytest.importorskip("matplotlib")

from bench import loadgen, procs, report
from bench.stats import percentile, summarize

pytestmark = pytest.mark.e2e


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


async def _closed(target: loadgen.Target) -> loadgen.Run:
    async with loadgen.session() as http:
        send = partial(loadgen.request, http, target)
        return await loadgen.closed_loop(send, concurrency=2, warmup=0.1, window=0.5)


async def _poisson(target: loadgen.Target) -> loadgen.Run:
    async with loadgen.session() as http:
        send = partial(loadgen.request, http, target)
        return await loadgen.poisson(send, rate=20, seed=1, warmup=0.1, window=0.4)


def test_harness_measures_both_systems_and_writes_a_report(
    fake_stack: Stack, tmp_path: Path
) -> None:
    direct = procs.start_direct(tmp_path, ttft_ms=5, itl_ms=2)
    try:
        targets = {
            report.DIRECT: direct.base_url,
            report.SPOOL: fake_stack.base_url,
        }
        rows = []
        for system, url in targets.items():
            target = loadgen.Target(url, "fake", max_tokens=8)
            for mode, run in (
                ("closed", asyncio.run(_closed(target))),
                ("poisson", asyncio.run(_poisson(target))),
            ):
                summary = summarize(run)
                assert summary["requests"] > 0
                assert summary["errors"] == 0, summary["error_sample"]
                assert summary["ttft_p50"] is not None and summary["itl_p50"] is not None
                level = 2.0 if mode == "closed" else 20.0
                head = {"suite": "overhead", "system": system, "mode": mode, "level": level}
                rows.append({**head, "rep": 0, **summary, "cpu": {}, "publishes": None})
    finally:
        direct.stop()
    path = report.write(rows, _meta(), tmp_path, tmp_path / "plots")
    text = path.read_text()
    assert "added TTFT p50" in text and "B llmspool" in text
    assert (tmp_path / "plots" / "overhead-ttft.png").stat().st_size > 0


def _meta() -> dict[str, object]:
    return {"profile": "test", "date": "now", "commit": "x", "cpus": 2, "loadavg": "0"}
