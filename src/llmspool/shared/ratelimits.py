"""Per-key limits, enforced atomically in Redis so that every API replica and the batch
worker share them.

Requests/min and tokens/min are token buckets refilled continuously (a limit of N per minute
refills N/60 per second, up to N); concurrent requests are a sorted set of request ids with a
lease, so a crashed API process cannot hold a slot forever. Each check is one Lua script over
the key's three Redis keys, which share a hash tag (one slot in a Redis Cluster).

Tokens are charged after a request, from its usage: a request is admitted while the key's token
bucket is not in debt, and a large reply may put it in debt for a while.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from llmspool.shared import keys
from llmspool.shared.credentials import ApiKey

REFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, limit)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or limit
  local ts = tonumber(state[2]) or now
  return math.min(limit, tokens + math.max(0, now - ts) * limit / 60)
end
local function store(key, tokens, limit)
  redis.call('HSET', key, 'tokens', tokens, 'ts', now)
  redis.call('EXPIRE', key, 120 + math.ceil(math.max(0, -tokens) * 60 / limit))
end
"""

# KEYS: rpm, tpm, inflight. ARGV: rpm, tpm, concurrency, request id, lease seconds.
# Returns {what, retry_after_seconds}; what is 'ok' when the request is admitted.
ADMIT = (
    REFILL
    + """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local requests = 0
if rpm > 0 then
  requests = level(KEYS[1], rpm)
  if requests < 1 then return {'requests', math.ceil((1 - requests) * 60 / rpm)} end
end
if tpm > 0 then
  local tokens = level(KEYS[2], tpm)
  if tokens <= 0 then return {'tokens', math.ceil((1 - tokens) * 60 / tpm)} end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {'concurrent requests', 1} end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
  redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[5])) + 60)
end
if rpm > 0 then store(KEYS[1], requests - 1, rpm) end
return {'ok', 0}
"""
)

# KEYS: tpm, inflight. ARGV: tpm, tokens used, request id.
RELEASE = (
    REFILL
    + """
redis.call('ZREM', KEYS[2], ARGV[3])
local tpm, used = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and used > 0 then store(KEYS[1], level(KEYS[1], tpm) - used, tpm) end
return 0
"""
)


async def take(
    redis: Redis, key: ApiKey, request_id: str, lease: float, concurrency: bool = True
) -> tuple[str, int]:
    """Count one request against ``key``'s limits: ``('ok', 0)``, or what is exhausted
    (``requests``, ``tokens``, ``concurrent requests``) and the seconds to wait. Without
    ``concurrency`` the request takes no concurrency slot (the caller counts those)."""
    slots = key.concurrency if concurrency else 0
    args: list[int | str] = [key.rpm, key.tpm, slots, request_id, math.ceil(lease)]
    script = redis.register_script(ADMIT)
    what, retry_after = await script(keys=list(keys.key_limits(key.id)), args=args)
    return (what.decode() if isinstance(what, bytes) else str(what)), int(retry_after)


async def release(redis: Redis, key: ApiKey, request_id: str, tokens: int) -> None:
    """Free ``request_id``'s concurrency slot and charge ``tokens`` to ``key``."""
    _, tpm, inflight = keys.key_limits(key.id)
    script = redis.register_script(RELEASE)
    await script(keys=[tpm, inflight], args=[key.tpm, tokens, request_id])


async def in_flight(redis: Redis, key: ApiKey) -> int:
    """``key``'s interactive requests in flight now (live leases)."""
    _, _, inflight = keys.key_limits(key.id)
    now = await redis.time()
    return int(await redis.zcount(inflight, f"({now[0] + now[1] / 1e6}", "+inf"))
