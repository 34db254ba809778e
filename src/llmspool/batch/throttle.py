"""A batch under its API key's limits: throttled, never refused.

A batch's lines count against the key that made it like interactive requests do: each line
queued takes one request from the key's requests/min bucket, lines are queued only while the
key's tokens/min bucket is not in debt, and lines waiting or running count towards the key's
concurrency (with its interactive requests in flight). The fan-out step queues the lines the
limits let in now and stops; the batch worker's sweep runs it again every
``batch_sweep_seconds``, so a batch under tight limits trickles in instead of failing. The
tokens its lines used are charged to the key's tokens/min bucket as they come in (by the
fan-out and finalize steps), so interactive requests of the same key see them too.
"""

from __future__ import annotations

from redis.asyncio import Redis

from llmspool.batch.lines import Line, ParsedFile
from llmspool.batch.store import BatchState, BatchStore
from llmspool.shared import ratelimits
from llmspool.shared.credentials import ApiKey

#: A batch line holds no concurrency slot of its own (it is counted from the batch's progress),
#: so the lease only bounds the rpm script's bookkeeping.
_LEASE = 60.0


def limited(key: ApiKey | None) -> bool:
    return key is not None and bool(key.rpm or key.tpm or key.concurrency)


async def admit(
    redis: Redis, key: ApiKey, state: BatchState, parsed: ParsedFile, lines: list[Line]
) -> list[Line]:
    """The first of ``lines`` that ``key``'s limits let in now."""
    room = len(lines)
    if key.concurrency:
        busy = await ratelimits.in_flight(redis, key) + _in_system(state, parsed)
        room = min(room, key.concurrency - busy)
    admitted = 0
    while admitted < room:
        line_id = f"{state.id}:{lines[admitted].number}"
        what, _ = await ratelimits.take(redis, key, line_id, _LEASE, concurrency=False)
        if what != "ok":
            break
        admitted += 1
    return lines[:admitted]


def _in_system(state: BatchState, parsed: ParsedFile) -> int:
    """Lines queued and not yet recorded (invalid lines were recorded at validation)."""
    fanned = state.count("fanned")
    queued = sum(1 for line in parsed.valid if line.number <= fanned)
    invalid = len(parsed.lines) - len(parsed.valid)
    return max(0, queued - (state.done - invalid))


async def charge(redis: Redis, store: BatchStore, key: ApiKey | None, state: BatchState) -> None:
    """Charge the tokens the batch's lines used since the last charge to ``key``."""
    used = state.count("input_tokens") + state.count("output_tokens")
    owed = used - state.count("charged_tokens")
    if key is None or not key.tpm or owed <= 0:
        return
    await ratelimits.release(redis, key, "", owed)
    await store.update(state.id, {"charged_tokens": str(used)})
