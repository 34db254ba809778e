"""Redis clients, configured once for every llmspool process."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
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

    With ``LLMSPOOL_REDIS_CLUSTER`` it is a ``RedisCluster``, typed as ``Redis``: llmspool uses
    the commands both share, and reaches what differs (sharded pub/sub) through
    :func:`is_cluster`.
    """
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(
            settings.resolved_redis_url(),
            decode_responses=False,
            max_connections=max_connections,
            socket_connect_timeout=5,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        )
        return cast(Redis, cluster)
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


def is_cluster(redis: Redis) -> bool:
    """Whether ``redis`` is a Redis Cluster client (reply channels are then sharded)."""
    return isinstance(redis, RedisCluster)


async def publish(redis: Redis, channel: str, message: bytes | str) -> None:
    """PUBLISH, or SPUBLISH on a cluster (which would copy a PUBLISH to every node)."""
    if is_cluster(redis):
        await redis.execute_command("SPUBLISH", channel, message)  # type: ignore[no-untyped-call]
    else:
        await redis.publish(channel, message)


def queue_publish(pipe: Pipeline, channel: str, message: bytes | str, sharded: bool) -> None:
    """Queue a PUBLISH (SPUBLISH when ``sharded``) on ``pipe``."""
    if sharded:
        pipe.execute_command("SPUBLISH", channel, message)
    else:
        pipe.publish(channel, message)
