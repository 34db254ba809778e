"""Logging set up the same way in every llmspool process: plain text or one JSON object a line.

Each record carries the id of the request being served (``request_id``; ``-`` outside one). The
API sets it when it accepts a request, a worker when it picks the job up; the job carries the
id across Redis, so ``grep <id>`` over every process' log follows one request end to end.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

#: The request the current asyncio task serves (each task has its own copy).
request_id: ContextVar[str | None] = ContextVar("llmspool_request_id", default=None)

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, logger, request_id, message, extras."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": self._process,
            "pid": record.process,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        body.update(
            (k, v) for k, v in record.__dict__.items() if k not in _STANDARD and k not in body
        )
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


def configure(level: str, process: str, fmt: str = "text") -> None:
    """Log to stderr at ``level``, as text or JSON (``fmt``), with request ids."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s {process}[%(process)d] %(name)s "
                "[%(request_id)s]: %(message)s"
            )
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
