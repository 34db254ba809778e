"""Structured logs: the JSON formatter and the request id stamped on every record."""

from __future__ import annotations

import asyncio
import json
import logging

from llmspool.shared.logs import JsonFormatter, RequestIdFilter, request_id


def _format(record: logging.LogRecord) -> dict[str, object]:
    RequestIdFilter().filter(record)
    data: dict[str, object] = json.loads(JsonFormatter("api").format(record))
    return data


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("llmspool.x", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


async def test_request_id_follows_each_task() -> None:
    async def serve(rid: str) -> dict[str, object]:
        request_id.set(rid)
        await asyncio.sleep(0)
        return _format(_record("hello %s", outcome="stop"))

    a, b = await asyncio.gather(serve("chatcmpl-a"), serve("chatcmpl-b"))
    assert a["request_id"] == "chatcmpl-a" and b["request_id"] == "chatcmpl-b"
    assert a["outcome"] == "stop" and a["level"] == "info" and a["process"] == "api"
    assert _format(_record("outside"))["request_id"] == "-"
