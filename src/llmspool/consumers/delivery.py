"""A worker's side of the consumer group: leases, reclaiming, retries, the dead stream, trimming.

Delivery is at least once. A job read with XREADGROUP stays pending until acknowledged.
While a worker runs a job it touches the entry every ``lease / 4`` with ``XCLAIM … JUSTID``,
which resets its idle time without raising its delivery count; a job whose worker died or
stalled goes idle, and after ``lease`` seconds a live worker takes it over with XAUTOCLAIM,
which raises the count. The attempt number is that count (XPENDING's ``times_delivered``),
less the deliveries that were handed back unrun (unknown schema, shutdown), which a hash keeps.
A job whose attempts pass the model's ``max_attempts`` goes to ``llmspool:{<model>}:dead``
with its last error and is acknowledged.

Streams are trimmed with ``XTRIM MINID`` to the oldest entry still pending or undelivered:
never MAXLEN, which silently deletes unacknowledged jobs. Consumers of workers that are gone
(nothing pending, no read for ``CONSUMER_IDLE``) are deleted from the group now and then.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from llmspool.shared import commands, keys, tenants
from llmspool.shared.messages import decode_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One delivery of a stream entry to this worker."""

    stream: str
    id: str
    fields: dict[str, str]
    #: times delivered (XPENDING), this delivery included: the attempt number frames carry
    delivery: int = 1
    #: earlier deliveries handed back unrun; they do not count as attempts
    handbacks: int = 0

    @property
    def attempts(self) -> int:
        """Deliveries that count towards ``max_attempts``."""
        return self.delivery - self.handbacks

    @property
    def request_id(self) -> str:
        return self.fields.get("request_id", self.id)


class Deliveries:
    """The consumer-group bookkeeping of one worker (consumer ``consumer``) of one model."""

    def __init__(self, redis: Redis, model: str, consumer: str, lease: float) -> None:
        self.redis = redis
        self.model = model
        self.consumer = consumer
        self.lease_ms = max(1, int(lease * 1000))
        self._streams = keys.model_streams(model)

    async def read(self, count: int, stream: str | None = None) -> list[Entry]:
        """Up to ``count`` new jobs (first deliveries) of ``stream`` (default: the requests
        stream), tenants in their turns (:mod:`llmspool.shared.tenants`); never waits."""
        stream = stream or keys.requests_stream(self.model)
        taken = await tenants.take(self.redis, stream, self.consumer, count)
        return [Entry(stream, _text(entry_id), _pairs(flat)) for entry_id, flat in taken]

    async def wait(self, streams: list[str], block_ms: int) -> None:
        """Wait up to ``block_ms`` for a job to be enqueued on any of ``streams``."""
        await tenants.wait(self.redis, streams, block_ms)

    async def reclaim(self, count: int) -> list[Entry]:
        """Take over up to ``count`` entries idle past the lease (their worker died)."""
        claimed: list[Entry] = []
        for stream in self._streams:
            if len(claimed) >= count:
                break
            reply: Any = await self.redis.xautoclaim(
                stream, keys.GROUP, self.consumer, self.lease_ms, "0-0", count=count - len(claimed)
            )
            raw = [(_text(i), decode_fields(f)) for i, f in reply[1] if f is not None]
            claimed += await self._with_counts(stream, raw)
        return claimed

    async def _with_counts(self, stream: str, raw: list[tuple[str, dict[str, str]]]) -> list[Entry]:
        if not raw:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _ in raw:
            pipe.xpending_range(stream, keys.GROUP, min=entry_id, max=entry_id, count=1)
        pipe.hmget(keys.handbacks(self.model), [entry_id for entry_id, _ in raw])
        *pending, backs = await pipe.execute()
        entries = []
        for (entry_id, fields), info, back in zip(raw, pending, backs, strict=True):
            delivered = int(info[0]["times_delivered"]) if info else 1
            entries.append(Entry(stream, entry_id, fields, delivered, int(back or 0)))
        return entries

    async def touch(self, held: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Keep ``held`` entries from looking idle; return those another worker took over
        (this worker stalled past its lease), which it must stop running."""
        lost: set[tuple[str, str]] = set()
        for stream in self._streams:
            ids = [entry_id for s, entry_id in held if s == stream]
            if not ids:
                continue
            mine = await self._owned(stream, ids)
            lost |= {(stream, entry_id) for entry_id in ids if entry_id not in mine}
            if mine:
                claim: list[Any] = sorted(mine)
                await self.redis.xclaim(stream, keys.GROUP, self.consumer, 0, claim, justid=True)
        return lost

    async def _owned(self, stream: str, ids: list[str]) -> set[str]:
        ordered = sorted(ids, key=_id_key)
        rows = await self.redis.xpending_range(
            stream,
            keys.GROUP,
            min=ordered[0],
            max=ordered[-1],
            count=len(ids) + 1000,
            consumername=self.consumer,
        )
        return {_text(row["message_id"]) for row in rows} & set(ids)

    async def hand_back(self, entry: Entry, *, counts: bool) -> None:
        """Give ``entry`` up now: it looks idle past the lease, so the next XAUTOCLAIM (any
        worker's) takes it. ``counts=False``: this delivery was not an attempt."""
        pipe = self.redis.pipeline(transaction=False)
        if not counts:
            pipe.hincrby(keys.handbacks(self.model), entry.id, 1)
        pipe.xclaim(
            entry.stream, keys.GROUP, self.consumer, 0, [entry.id], idle=self.lease_ms, justid=True
        )
        await pipe.execute()

    async def note_error(self, entry: Entry, message: str) -> None:
        """Remember why this attempt failed (the dead stream shows the last one)."""
        await commands.hset(self.redis, keys.last_errors(self.model), {entry.id: message})

    async def last_error(self, entry: Entry) -> str | None:
        raw = await commands.hget(self.redis, keys.last_errors(self.model), entry.id)
        return _text(raw) if raw is not None else None

    async def ack(self, entry: Entry) -> None:
        if entry.delivery == 1:  # a first delivery has no error or handback recorded
            await self.redis.xack(entry.stream, keys.GROUP, entry.id)
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(entry.stream, keys.GROUP, entry.id)
        pipe.hdel(keys.last_errors(self.model), entry.id)
        pipe.hdel(keys.handbacks(self.model), entry.id)
        await pipe.execute()

    async def bury(self, entry: Entry, error: str) -> None:
        """Move ``entry`` to the dead stream with ``error`` and acknowledge it, atomically."""
        dead: Any = {
            **entry.fields,
            "error": error,
            "attempts": str(entry.attempts),
            "source_stream": entry.stream,
            "source_id": entry.id,
            "failed_at": f"{time.time():.6f}",
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(keys.dead_stream(self.model), dead)
        pipe.xack(entry.stream, keys.GROUP, entry.id)
        pipe.hdel(keys.last_errors(self.model), entry.id)
        pipe.hdel(keys.handbacks(self.model), entry.id)
        await pipe.execute()
        log.warning("job %s moved to the dead stream: %s", entry.request_id, error)

    async def trim(self) -> None:
        """Trim each stream to its oldest entry still pending or not yet delivered."""
        for stream in self._streams:
            floor = await self._floor(stream)
            if floor is not None:
                await self.redis.xtrim(stream, minid=floor, approximate=False)

    async def _floor(self, stream: str) -> str | None:
        groups: Any = await self.redis.xinfo_groups(stream)
        group = next((g for g in groups if _text(g["name"]) == keys.GROUP), None)
        if group is None:
            return None
        summary: Any = await self.redis.xpending(stream, keys.GROUP)
        oldest = summary.get("min")
        # Entries after last-delivered-id are undelivered and pending ones are older, so the
        # oldest pending entry (or, with none, the last delivered one) bounds what is settled.
        return _text(oldest) if oldest else _text(group["last-delivered-id"])

    async def forget_gone(self, idle_ms: int) -> int:
        """Delete the group's consumers (other than this one) with nothing pending that have
        not read for ``idle_ms``: workers that are gone. Checked and deleted in one script,
        so a consumer that reads in between is never deleted with entries pending."""
        removed = 0
        for stream in self._streams:
            args = [keys.GROUP, str(idle_ms), self.consumer]
            count = await commands.run_script(self.redis, _FORGET_GONE, [stream], args)
            removed += int(count)
        return removed


#: KEYS[1]: stream; ARGV: group, idle ms, this consumer. Returns how many were deleted.
_FORGET_GONE = """
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers.err then return 0 end
local removed = 0
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A field list as Lua hands it back (name, value, name, value...) as a dict."""
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
