"""Fair turns between tenants (API keys) inside one model's queue.

A job does not go straight onto its work stream (``llmspool:{<model>}:requests`` or ``:batch``):
it waits in the stream's waiting room — an entry of ``<stream>:waiting`` whose id is queued on
its tenant's list ``<stream>:tenant:<tenant>`` — until a worker takes it. A take picks the
tenant whose turn comes first (the lowest score in ``<stream>:turns``), moves that tenant's
oldest job onto the work stream and delivers it with XREADGROUP, all in one script; from there
on the job is an ordinary pending entry (leases, XAUTOCLAIM, the dead stream, trimming).

Turns are stride scheduling (weighted fair queueing by virtual time): a tenant's turn advances
by ``1 / weight`` each time one of its jobs is taken, the ``clock`` is the virtual time of the
last turn, and a tenant that comes back after waiting for nothing starts at the clock (it does
not bank turns while idle, nor lose the ones it had). Two tenants with weights 3 and 1 that both
keep jobs waiting get three jobs to one. Entries added to the work stream directly (a requeued
dead job, an older producer) are delivered first, as before.

Admission (the 429): a model's queue is full when its jobs waiting and in flight reach the
limit; even then a tenant is admitted while it holds fewer waiting jobs than its share of what
is left of the limit, ``(limit - in flight) * weight / (the weights of the tenants waiting, its
own included)``. So one key's flood fills its own share, and a newcomer still gets in; the queue
may pass its limit by the shares of the tenants that came since it filled.

Idle workers wait on ``<stream>:doorbell`` (BLPOP): every enqueue pushes one element (at most
64 are kept: enough to wake every idle worker) and a take that finds nothing clears it.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from llmspool.shared import keys

#: KEYS: stream, waiting, tenant list, turns, shares, doorbell.
#: ARGV: limit (0: none), group, tenant, weight, fields... Returns {1, id} or {0, depth}.
ENQUEUE = """
local limit, tenant, weight = tonumber(ARGV[1]), ARGV[3], tonumber(ARGV[4])
if limit > 0 then
  local held = nil
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
  if type(groups) == 'table' and not groups.err then
    for _, group in ipairs(groups) do
      local info = {}
      for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
      if info['name'] == ARGV[2] and info['lag'] then
        held = tonumber(info['lag']) + tonumber(info['pending'])
      end
    end
  end
  if held == nil then held = redis.call('XLEN', KEYS[1]) end
  local depth = held + redis.call('XLEN', KEYS[2])
  if depth >= limit then
    local total = weight
    for _, other in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
      if other ~= tenant then
        total = total + (tonumber(redis.call('HGET', KEYS[5], 'weight:' .. other)) or 1)
      end
    end
    if redis.call('LLEN', KEYS[3]) >= (limit - held) * weight / total then
      return {0, depth}
    end
  end
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('RPUSH', KEYS[3], id)
redis.call('HSET', KEYS[5], 'weight:' .. tenant, ARGV[4])
if not redis.call('ZSCORE', KEYS[4], tenant) then
  local clock = tonumber(redis.call('HGET', KEYS[5], 'clock')) or 0
  local pass = tonumber(redis.call('HGET', KEYS[5], 'pass:' .. tenant)) or 0
  redis.call('ZADD', KEYS[4], math.max(clock, pass), tenant)
end
if redis.call('RPUSH', KEYS[6], '1') > 64 then redis.call('LTRIM', KEYS[6], 0, 63) end
return {1, id}
"""

#: KEYS: stream, waiting, turns, shares, doorbell. ARGV: group, consumer, count, the tenant
#: lists' prefix. Returns the delivered entries as XREADGROUP does ({id, {field, value...}}).
TAKE = """
local want = tonumber(ARGV[3])
local out = {}
local direct = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want,
  'STREAMS', KEYS[1], '>')
if direct then out = direct[1][2] end
local moved = 0
while #out + moved < want do
  local top = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #top == 0 then break end
  local tenant = top[1]
  local queue = ARGV[4] .. tenant
  local id = redis.call('LPOP', queue)
  if id then
    local found = redis.call('XRANGE', KEYS[2], id, id)
    redis.call('XDEL', KEYS[2], id)
    if #found > 0 then
      redis.call('XADD', KEYS[1], '*', unpack(found[1][2]))
      moved = moved + 1
    end
    local weight = tonumber(redis.call('HGET', KEYS[4], 'weight:' .. tenant)) or 1
    local after = tonumber(top[2]) + 1 / weight
    redis.call('HSET', KEYS[4], 'clock', top[2], 'pass:' .. tenant, after)
    if redis.call('LLEN', queue) > 0 then
      redis.call('ZADD', KEYS[3], after, tenant)
    else
      redis.call('ZREM', KEYS[3], tenant)
    end
  else
    redis.call('ZREM', KEYS[3], tenant)
  end
end
if moved > 0 then
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', moved,
    'STREAMS', KEYS[1], '>')
  for _, entry in ipairs(got[1][2]) do out[#out + 1] = entry end
end
if #out == 0 then redis.call('DEL', KEYS[5]) end
return out
"""


def enqueue_command(
    stream: str, tenant: str, weight: float, limit: int, fields: dict[str, str]
) -> list[Any]:
    """The arguments of ``EVAL ENQUEUE`` that put one job in ``tenant``'s queue in front of
    ``stream`` (``limit`` 0: never refused)."""
    names = [
        stream,
        keys.waiting(stream),
        keys.tenant_queue(stream, tenant),
        keys.turns(stream),
        keys.shares(stream),
        keys.doorbell(stream),
    ]
    args: list[Any] = [limit, keys.GROUP, tenant, f"{weight:g}"]
    for name, value in fields.items():
        args += [name, value]
    return [len(names), *names, *args]


async def take(redis: Redis, stream: str, consumer: str, count: int) -> list[tuple[Any, Any]]:
    """Deliver up to ``count`` jobs of ``stream`` to ``consumer``, tenants in their turns:
    (entry id, flat field list) pairs, as XREADGROUP's raw reply holds them."""
    names = [stream, keys.waiting(stream), keys.turns(stream), keys.shares(stream)]
    names.append(keys.doorbell(stream))
    args: list[Any] = [keys.GROUP, consumer, count, keys.tenant_queue_prefix(stream)]
    reply: Any = await redis.eval(TAKE, len(names), *names, *args)  # type: ignore[misc]
    return [(entry[0], entry[1]) for entry in reply or []]


async def wait(redis: Redis, streams: list[str], timeout_ms: int) -> None:
    """Wait up to ``timeout_ms`` for a job to be enqueued on any of ``streams``."""
    bells = [keys.doorbell(stream) for stream in streams]
    # BLPOP takes fractions of a second (Redis >= 6), whatever redis-py's annotation says
    timeout: Any = max(timeout_ms, 1) / 1000
    await redis.blpop(bells, timeout=timeout)  # type: ignore[misc]
