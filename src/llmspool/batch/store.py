"""Batch and file state in Redis, and the scripts that keep it exact under retries.

A batch is a hash (``keys.batch``) holding its OpenAI fields, its counters and its progress;
each line's result goes into ``keys.batch_results`` with HSETNX inside one script that also
bumps the counters, so a line retried after a crash is recorded once. ``keys.batch_claims``
ties each line to the one stream entry allowed to run it: a copy queued twice (a fan-out
repeated after a crash) is skipped instead of run again. Every script touches one batch's keys
only, which share the hash tag ``{<batch_id>}``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from llmspool.batch.models import (
    FINAL_STATUSES,
    Batch,
    BatchErrors,
    BatchRequestCounts,
    BatchUsage,
    FileObject,
    Page,
    Record,
)
from llmspool.shared import commands, keys
from llmspool.shared.errors import NotFound

T = TypeVar("T", FileObject, Batch)

#: Claim line ARGV[1] for entry ARGV[2]: 'run', 'done' (already recorded), 'duplicate' (another
#: entry owns it) or 'stopped' (the batch no longer dispatches; an own claim is released).
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
local owner = redis.call('HGET', KEYS[3], ARGV[1])
local recorded = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1
if status ~= 'in_progress' or redis.call('HGET', KEYS[1], 'frozen') == '1' then
  if owner == ARGV[2] and not recorded then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('HINCRBY', KEYS[1], 'running', -1)
  end
  return 'stopped'
end
if recorded then return 'done' end
if owner and owner ~= ARGV[2] then return 'duplicate' end
if not owner then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'running', 1)
end
return 'run'
"""

#: Record line ARGV[1]'s result ARGV[2] once, counting it under ARGV[3] ('completed' or
#: 'failed') with ARGV[4] input and ARGV[5] output tokens. Returns -1 (the batch is frozen),
#: 0 (already recorded), 1 (recorded), 2 (recorded, and every line now has a result) or 3
#: (recorded, and it was the last running line of a cancelling batch).
_RECORD = """
if redis.call('HGET', KEYS[1], 'frozen') == '1' then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'running', -1)
end
local done = tonumber(redis.call('HGET', KEYS[1], 'completed') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '-1')
if total >= 0 and done >= total then return 2 end
if redis.call('HGET', KEYS[1], 'status') == 'cancelling'
  and tonumber(redis.call('HGET', KEYS[1], 'running') or '0') <= 0 then return 3 end
return 1
"""

#: Move to status ARGV[1] (stamping field ARGV[2] with ARGV[3]) if the status is one of
#: ARGV[5..]; a non-empty ARGV[4] freezes the results and notes how the batch ends.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for i = 5, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
    if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'frozen', '1', 'ending', ARGV[4]) end
    return 1
  end
end
return 0
"""

_STAMPS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class BatchState:
    """A batch's hash, decoded: the OpenAI object plus the progress fields."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    def __getitem__(self, name: str) -> str:
        return self.fields.get(name, "")

    def count(self, name: str) -> int:
        return int(self.fields.get(name) or 0)

    def stamp(self, name: str) -> float | None:
        value = self.fields.get(name)
        return float(value) if value else None

    @property
    def id(self) -> str:
        return self["id"]

    @property
    def status(self) -> str:
        return self["status"]

    @property
    def done(self) -> int:
        return self.count("completed") + self.count("failed")

    def expired(self, now: float | None = None) -> bool:
        expires = self.stamp("expires_at")
        return expires is not None and (now or time.time()) > expires

    def to_batch(self) -> Batch:
        stamps = {name: int(v) for name in _STAMPS if (v := self.stamp(name)) is not None}
        errors = self.fields.get("errors")
        usage = None
        if self.count("input_tokens") or self.count("output_tokens"):
            usage = BatchUsage(
                input_tokens=self.count("input_tokens"),
                output_tokens=self.count("output_tokens"),
                total_tokens=self.count("input_tokens") + self.count("output_tokens"),
            )
        # validated from a dict: the status (a str here) and the stamps are checked by Batch
        return Batch.model_validate(
            {
                "id": self.id,
                "endpoint": self["endpoint"],
                "model": self.fields.get("model") or None,
                "errors": BatchErrors.model_validate_json(errors) if errors else None,
                "input_file_id": self["input_file_id"],
                "completion_window": self["completion_window"],
                "status": self.status,
                "output_file_id": self.fields.get("output_file_id") or None,
                "error_file_id": self.fields.get("error_file_id") or None,
                "request_counts": BatchRequestCounts(
                    total=self.count("total"),
                    completed=self.count("completed"),
                    failed=self.count("failed"),
                ),
                "usage": usage,
                "metadata": orjson.loads(meta) if (meta := self.fields.get("metadata")) else None,
                **stamps,
            }
        )


class BatchStore:
    """Every read and write of batch and file state."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._record = redis.register_script(_RECORD)
        self._transition = redis.register_script(_TRANSITION)

    # ------------------------------------------------------------------ files

    async def put_file(self, meta: FileObject, content: bytes, owner: str = "") -> None:
        """Store a file; ``owner`` is the id of the API key that made it ("" with keys off)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.file_content(meta.id), content)
        pipe.hset(keys.file(meta.id), mapping={"json": meta.model_dump_json(), "owner": owner})
        pipe.zadd(keys.FILES_INDEX, {meta.id: meta.created_at})
        await pipe.execute()

    async def file(self, file_id: str, owner: str | None = None) -> FileObject:
        """A file's metadata; with ``owner``, only if that key made it (else not found)."""
        raw, made_by = await commands.hmget(self.redis, keys.file(file_id), ["json", "owner"])
        if raw is None or (owner is not None and _s(made_by or b"") != owner):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return FileObject.model_validate_json(raw)

    async def file_content(self, file_id: str) -> bytes:
        content: bytes | None = await self.redis.get(keys.file_content(file_id))
        if content is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return content

    async def delete_file(self, file_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.file(file_id), keys.file_content(file_id))
        pipe.zrem(keys.FILES_INDEX, file_id)
        deleted, _ = await pipe.execute()
        if not deleted:
            raise NotFound(f"No such File object: {file_id}", param="file_id")

    async def list_files(
        self, after: str | None, limit: int, order: str, purpose: str | None, owner: str | None
    ) -> Page:
        async def load(file_id: str) -> FileObject | None:
            try:
                found = await self.file(file_id, owner)
            except NotFound:
                return None
            return found if purpose is None or found.purpose == purpose else None

        return await self._page(keys.FILES_INDEX, after, limit, order == "desc", load)

    async def old_files(self, before: float) -> list[str]:
        ids = await self.redis.zrangebyscore(keys.FILES_INDEX, "-inf", before)
        return [_s(i) for i in ids]

    # ------------------------------------------------------------------ batches

    async def create_batch(self, fields: dict[str, str], created_at: float) -> None:
        batch_id = fields["id"]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.batch(batch_id), mapping=fields)
        pipe.zadd(keys.BATCHES_INDEX, {batch_id: created_at})
        pipe.sadd(keys.BATCHES_ACTIVE, batch_id)
        await pipe.execute()

    async def state(self, batch_id: str) -> BatchState:
        raw = await commands.hgetall(self.redis, keys.batch(batch_id))
        if not raw:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return BatchState({_s(k): _s(v) for k, v in raw.items()})

    async def batch(self, batch_id: str, owner: str | None = None) -> Batch:
        """A batch; with ``owner``, only if that key made it (else not found)."""
        state = await self.state(batch_id)
        if owner is not None and state.fields.get("owner", "") != owner:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return state.to_batch()

    async def list_batches(self, after: str | None, limit: int, owner: str | None) -> Page:
        async def load(batch_id: str) -> Batch | None:
            try:
                return await self.batch(batch_id, owner)
            except NotFound:
                return None

        return await self._page(keys.BATCHES_INDEX, after, limit, True, load)

    async def update(self, batch_id: str, fields: dict[str, str]) -> None:
        await commands.hset(self.redis, keys.batch(batch_id), fields)

    async def transition(
        self,
        batch_id: str,
        to: str,
        *,
        allowed: tuple[str, ...],
        ending: str = "",
        stamp: bool = True,
    ) -> bool:
        """Move to status ``to`` if the batch is in one of ``allowed``, stamping ``<to>_at``;
        a non-empty ``ending`` also freezes its results."""
        args = [to, f"{to}_at" if stamp else "", f"{time.time():.3f}", ending, *allowed]
        moved = await self._transition(keys=[keys.batch(batch_id)], args=args)
        if moved and to in FINAL_STATUSES:
            await commands.srem(self.redis, keys.BATCHES_ACTIVE, batch_id)
        return bool(moved)

    async def active(self) -> list[str]:
        members = await commands.smembers(self.redis, keys.BATCHES_ACTIVE)
        return sorted(_s(m) for m in members)

    async def old_batches(self, before: float) -> list[str]:
        ids = await self.redis.zrangebyscore(keys.BATCHES_INDEX, "-inf", before)
        return [_s(i) for i in ids]

    async def purge_batch(self, batch_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.batch(batch_id), keys.batch_results(batch_id), keys.batch_claims(batch_id))
        pipe.zrem(keys.BATCHES_INDEX, batch_id)
        pipe.srem(keys.BATCHES_ACTIVE, batch_id)
        await pipe.execute()

    # ------------------------------------------------------------------ lines

    def _line_keys(self, batch_id: str) -> list[str]:
        return [keys.batch(batch_id), keys.batch_results(batch_id), keys.batch_claims(batch_id)]

    async def claim(self, batch_id: str, line: int, entry_id: str) -> str:
        """May the stream entry ``entry_id`` run ``line`` now? See ``_CLAIM``."""
        verdict = await self._claim(keys=self._line_keys(batch_id), args=[line, entry_id])
        return _s(verdict)

    async def record(
        self, batch_id: str, line: int, result: Record, *, ok: bool, tokens: tuple[int, int]
    ) -> int:
        """Record ``line``'s result once; see ``_RECORD`` for the answer."""
        args = [line, orjson.dumps(result), "completed" if ok else "failed", *tokens]
        answer = await self._record(keys=self._line_keys(batch_id), args=args)
        return int(answer)

    async def results(self, batch_id: str) -> dict[int, Record]:
        raw = await commands.hgetall(self.redis, keys.batch_results(batch_id))
        return {int(_s(line)): orjson.loads(value) for line, value in raw.items()}

    # ------------------------------------------------------------------ paging

    async def _page(
        self,
        index: str,
        after: str | None,
        limit: int,
        descending: bool,
        load: Callable[[str], Awaitable[T | None]],
    ) -> Page:
        start = 0
        if after is not None:
            rank = await (self.redis.zrevrank if descending else self.redis.zrank)(index, after)
            start = 0 if rank is None else int(rank) + 1
        items: list[T] = []
        while len(items) <= limit:
            ids = await self._ids(index, start, limit + 1, descending)
            if not ids:
                break
            start += len(ids)
            for item_id in ids:
                found = await load(item_id)
                if found is not None:
                    items.append(found)
        page, more = items[:limit], len(items) > limit
        return Page(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=more,
        )

    async def _ids(self, index: str, start: int, count: int, descending: bool) -> list[str]:
        read = self.redis.zrevrange if descending else self.redis.zrange
        return [_s(i) for i in await read(index, start, start + count - 1)]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
