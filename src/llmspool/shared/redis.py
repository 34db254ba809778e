"""Redis clients, configured once for every llmspool process."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmspool.shared.settings import Settings

#: Errors that mean "Redis is away for now": retried, reported as 503, never a crash.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(settings: Settings, *, max_connections: int = 512) -> Redis:
    """A client with reconnects and bounded socket waits (a paused Redis gives an error).

    Only connection errors are retried: a command that timed out may still run once Redis
    wakes up, and retrying a timed-out XADD could enqueue a job twice.
    """
    client: Redis = Redis.from_url(
        settings.resolved_redis_url(),
        decode_responses=False,
        max_connections=max_connections,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError],
    )
    return client
