"""The request log: one record per request in a capped Redis stream, feedback joined on read.

The API writes a :class:`RequestRecord` when a request ends (``XADD … MAXLEN ~``), and, if
``LLMSPOOL_REQUEST_LOG_FILE`` is set, appends it as a JSON line to that file too. Feedback sent
to ``POST /v1/feedback`` lands in a hash per request id (with a TTL); readers join it in.
:func:`recent`, :func:`find` and :func:`follow` are the read API the command line
(``llmspool log``) and the admin routes use::

    redis-cli XREVRANGE llmspool:requestlog + - COUNT 5
    redis-cli HGETALL llmspool:feedback:<request_id>
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator
from redis.asyncio import Redis

from llmspool.shared import keys
from llmspool.shared.messages import RequestBody, decode_fields
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.settings import Settings

log = logging.getLogger(__name__)

#: A request's parameters (temperature, max_tokens, ...) as its JSON body gave them.
Params = dict[str, Any]

#: Fields of a request body that are its content, not its parameters.
_CONTENT_FIELDS = {"messages", "prompt", "input", "model"}
_JSON_FIELDS = ("params", "prompt")
_PAGE = 200


class Feedback(BaseModel):
    """A user's judgement of one reply."""

    # visible ASCII only, as request ids are: the OpenAPI spec then says what the route accepts
    request_id: str = Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")
    rating: int = Field(ge=-100, le=100, description="e.g. +1 / -1, or 1 to 5")
    comment: str | None = Field(default=None, max_length=8000)
    time: float = Field(default_factory=time.time)

    @field_validator("rating", "time", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true is no number, as the OpenAPI spec says
            raise ValueError("must be a number, not a boolean")
        return value


class RequestRecord(BaseModel):
    """What the request log keeps about one request."""

    request_id: str
    time: float
    model: str
    kind: str
    backend: str | None = None
    worker: str | None = None
    attempt: int = 0
    params: Params = Field(default_factory=dict)
    prompt: Any = None
    output: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_time: float | None = None
    ttft: float | None = None
    total_time: float | None = None
    outcome: str
    error: str | None = None
    feedback: Feedback | None = None
    #: Stream entry id (set when read back).
    entry_id: str | None = None

    def to_fields(self) -> dict[str, str]:
        """The flat stream entry (JSON for the structured fields)."""
        fields: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"feedback", "entry_id"}).items():
            if value is None:
                continue
            fields[name] = orjson.dumps(value).decode() if name in _JSON_FIELDS else str(value)
        return fields

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> RequestRecord:
        data: dict[str, Any] = dict(fields)  # the JSON fields are decoded in place
        for name in _JSON_FIELDS:
            if name in data:
                data[name] = orjson.loads(data[name])
        return cls.model_validate({**data, "entry_id": entry_id})


def request_parts(body: RequestBody) -> tuple[Params, Any]:
    """A request's parameters (what shapes generation) and its content (what it is about)."""
    params = body.model_dump(exclude=_CONTENT_FIELDS, exclude_none=True)
    if isinstance(body, ChatCompletionRequest):
        content: Any = [m.model_dump(exclude_none=True) for m in body.messages]
    elif isinstance(body, CompletionRequest):
        content = body.prompt
    elif isinstance(body, EmbeddingRequest):
        content = body.input
    else:
        content = None
    return params, content


class RequestLog:
    """Writes records (privacy settings applied) to Redis and optionally to a JSONL file."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._file_lock = threading.Lock()
        self._writing: set[asyncio.Task[None]] = set()

    @property
    def keeps_output(self) -> bool:
        return self._settings.request_log_outputs

    def _redact(self, record: RequestRecord) -> RequestRecord:
        limit = self._settings.request_log_max_chars
        prompt = record.prompt if self._settings.request_log_prompts else None
        if isinstance(prompt, str) and len(prompt) > limit:
            prompt = prompt[:limit]
        output = record.output if self._settings.request_log_outputs else None
        if output is not None and len(output) > limit:
            output = output[:limit]
        return record.model_copy(update={"prompt": prompt, "output": output})

    def submit(self, record: RequestRecord) -> None:
        """Write ``record`` in the background: the reply never waits for its log record."""
        task = asyncio.get_running_loop().create_task(self.write(record))
        self._writing.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("request log write failed: %s", task.exception())

    async def drain(self) -> None:
        """Wait for the records still being written (at shutdown)."""
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    async def write(self, record: RequestRecord) -> None:
        """Append ``record``; a Redis outage loses the record, never the reply."""
        record = self._redact(record)
        fields: Any = record.to_fields()
        with contextlib.suppress(*UNAVAILABLE):
            await self._redis.xadd(
                keys.REQUEST_LOG,
                fields,
                maxlen=self._settings.request_log_max,
                approximate=True,
            )
        if self._settings.request_log_file is not None:
            line = record.model_dump_json(exclude_none=True, exclude={"entry_id"})
            await asyncio.to_thread(self._append, self._settings.request_log_file, line)

    async def add_feedback(self, feedback: Feedback) -> None:
        """Attach ``feedback`` to its request (the latest feedback wins)."""
        key = keys.feedback(feedback.request_id)
        mapping: Any = {
            k: str(v)
            for k, v in feedback.model_dump(exclude={"request_id"}).items()
            if v is not None
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, int(self._settings.feedback_ttl))
        await pipe.execute()
        if self._settings.request_log_file is not None:
            line = orjson.dumps({"feedback": feedback.model_dump()}).decode()
            await asyncio.to_thread(self._append, self._settings.request_log_file, line)

    def _append(self, path: Path, line: str) -> None:
        with self._file_lock, path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


# --------------------------------------------------------------------------- reading


def _matches(record: RequestRecord, model: str | None, outcome: str | None) -> bool:
    return (model is None or record.model == model) and (
        outcome is None or record.outcome == outcome
    )


async def recent(
    redis: Redis, limit: int = 50, *, model: str | None = None, outcome: str | None = None
) -> list[RequestRecord]:
    """The newest ``limit`` records (newest first) matching the filters, feedback joined."""
    found: list[RequestRecord] = []
    async for record in _newest_first(redis):
        if _matches(record, model, outcome):
            found.append(record)
            if len(found) >= limit:
                break
    return await with_feedback(redis, found)


async def find(redis: Redis, request_id: str) -> RequestRecord | None:
    """The record of ``request_id``, feedback joined (None when absent or trimmed away)."""
    async for record in _newest_first(redis):
        if record.request_id == request_id:
            return (await with_feedback(redis, [record]))[0]
    return None


async def _newest_first(redis: Redis) -> AsyncIterator[RequestRecord]:
    end = "+"
    while True:
        entries = await redis.xrevrange(keys.REQUEST_LOG, max=end, min="-", count=_PAGE)
        for entry_id, fields in entries:
            yield RequestRecord.from_fields(_text(entry_id), decode_fields(fields))
        if len(entries) < _PAGE:
            return
        end = f"({_text(entries[-1][0])}"


async def with_feedback(redis: Redis, records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """``records`` with their feedback attached (one pipelined round trip)."""
    if not records:
        return []
    pipe = redis.pipeline(transaction=False)
    for record in records:
        pipe.hgetall(keys.feedback(record.request_id))
    replies = await pipe.execute()
    return [_attach(record, raw) for record, raw in zip(records, replies, strict=True)]


def _attach(record: RequestRecord, raw: dict[Any, Any]) -> RequestRecord:
    if not raw:
        return record
    fields = decode_fields(raw)
    feedback = Feedback.model_validate({**fields, "request_id": record.request_id})
    return record.model_copy(update={"feedback": feedback})


async def follow(redis: Redis, block_ms: int = 1000) -> AsyncIterator[RequestRecord]:
    """Records as they are written from now on (``XREAD BLOCK`` after the newest entry; not
    ``$``, which would skip what arrives between two blocking reads)."""
    newest = await redis.xrevrange(keys.REQUEST_LOG, count=1)
    last = _text(newest[0][0]) if newest else "0-0"
    while True:
        reply = await redis.xread({keys.REQUEST_LOG: last}, block=block_ms)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = _text(entry_id)
                yield RequestRecord.from_fields(last, decode_fields(fields))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
