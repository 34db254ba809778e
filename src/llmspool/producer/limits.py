"""Per-key limits, enforced atomically in Redis so that every API replica shares them.

Requests/min and tokens/min are token buckets refilled continuously (a limit of N per minute
refills N/60 per second, up to N); concurrent requests are a sorted set of request ids with a
lease, so a crashed API process cannot hold a slot forever. Each check is one Lua script over
the key's three Redis keys, which share a hash tag (one slot in a Redis Cluster).

Tokens are charged after a request, from its usage: a request is admitted while the key's token
bucket is not in debt, and a large reply may put it in debt for a while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from llmspool.producer.dispatch import Reply
from llmspool.shared import keys
from llmspool.shared.credentials import ApiKey
from llmspool.shared.errors import RateLimitExceeded

_REFILL = """
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
_ADMIT = (
    _REFILL
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
_RELEASE = (
    _REFILL
    + """
redis.call('ZREM', KEYS[2], ARGV[3])
local tpm, used = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and used > 0 then store(KEYS[1], level(KEYS[1], tpm) - used, tpm) end
return 0
"""
)


@dataclass
class Admission:
    """A request admitted under a key's limits; release it when the response is over."""

    redis: Redis
    key: ApiKey
    request_id: str
    #: the reply whose usage is charged at release (set once the job is enqueued)
    reply: Reply | None = None
    released: bool = False

    async def release(self) -> None:
        """Free the concurrency slot and charge the tokens the request used (once)."""
        if self.released or not (self.key.tpm or self.key.concurrency):
            return
        self.released = True
        _, tpm, inflight = keys.key_limits(self.key.id)
        script = self.redis.register_script(_RELEASE)
        await script(keys=[tpm, inflight], args=[self.key.tpm, self.tokens(), self.request_id])

    def tokens(self) -> int:
        """Tokens the request used (0 until its final frame arrived)."""
        usage = self.reply.usage if self.reply is not None else None
        return usage.total_tokens if usage is not None else 0


async def admit(redis: Redis, key: ApiKey, request_id: str, lease: float) -> Admission:
    """Count one request against ``key``'s limits, or raise 429 with the time to wait."""
    admission = Admission(redis, key, request_id)
    if not (key.rpm or key.tpm or key.concurrency):
        return admission
    script = redis.register_script(_ADMIT)
    args: list[int | str] = [key.rpm, key.tpm, key.concurrency, request_id, math.ceil(lease)]
    what, retry_after = await script(keys=list(keys.key_limits(key.id)), args=args)
    what = what.decode() if isinstance(what, bytes) else str(what)
    if what != "ok":
        raise RateLimitExceeded(
            f"Rate limit reached for this API key: {what} (limit {_limit(key, what)}). "
            f"Retry after {retry_after} s.",
            retry_after=max(1, int(retry_after)),
        )
    return admission


def _limit(key: ApiKey, what: str) -> str:
    return {
        "requests": f"{key.rpm}/min",
        "tokens": f"{key.tpm}/min",
        "concurrent requests": str(key.concurrency),
    }[what]
