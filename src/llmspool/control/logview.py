"""``llmspool log``: the request log, as a table or JSON lines, once or following."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from llmspool.shared import requestlog
from llmspool.shared.redis import connect
from llmspool.shared.requestlog import RequestRecord
from llmspool.shared.settings import Settings


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.0f}"


def _feedback(record: RequestRecord) -> str:
    if record.feedback is None:
        return ""
    comment = f" {record.feedback.comment}" if record.feedback.comment else ""
    return f"{record.feedback.rating:+d}{comment}"


def table(records: Iterable[RequestRecord]) -> Table:
    """Records as a rich table, oldest at the top."""
    out = Table(
        "time", "request", "model", "worker", "outcome", "in", "out",
        "queue ms", "ttft ms", "total ms", "feedback",
    )  # fmt: skip
    for r in records:
        out.add_row(
            dt.datetime.fromtimestamp(r.time).strftime("%H:%M:%S.%f")[:-3],
            r.request_id,
            r.model,
            (r.worker or "").split("@")[-1],
            r.outcome,
            "" if r.prompt_tokens is None else str(r.prompt_tokens),
            "" if r.completion_tokens is None else str(r.completion_tokens),
            _ms(r.queue_time),
            _ms(r.ttft),
            _ms(r.total_time),
            _feedback(r),
        )
    return out


def _matches(record: RequestRecord, model: str | None, outcome: str | None) -> bool:
    return (model is None or record.model == model) and (
        outcome is None or record.outcome == outcome
    )


def _print(console: Console, records: list[RequestRecord], as_json: bool) -> None:
    if as_json:
        for record in records:
            console.print_json(record.model_dump_json(exclude_none=True), indent=None)
    elif records:
        console.print(table(records))


async def show(
    settings: Settings,
    *,
    limit: int,
    model: str | None,
    outcome: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """Print the newest ``limit`` matching records, then (``follow``) new ones as they come."""
    console = Console(soft_wrap=True)
    redis = connect(settings)
    try:
        records = await requestlog.recent(redis, limit, model=model, outcome=outcome)
        _print(console, records[::-1], as_json)
        if not follow:
            return
        async for record in requestlog.follow(redis):
            if _matches(record, model, outcome):
                _print(console, [record], as_json)
    finally:
        await redis.aclose()
