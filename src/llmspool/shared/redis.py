"""Redis clients, configured once for every llmspool process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
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
    pool = _UnlockedPool.from_url(
        settings.resolved_redis_url(),
        decode_responses=False,
        max_connections=max_connections,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError],
    )
    pool.connection_class = _TIMED_SENDS.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)


def is_cluster(redis: Redis) -> bool:
    """Whether ``redis`` is a Redis Cluster client (reply channels are then sharded)."""
    return isinstance(redis, RedisCluster)


async def publish(redis: Redis, channel: str, message: bytes | str) -> None:
    """PUBLISH, or SPUBLISH on a cluster (which would copy a PUBLISH to every node)."""
    if is_cluster(redis):
        # redis-py leaves execute_command unannotated
        await redis.execute_command("SPUBLISH", channel, message)  # type: ignore[no-untyped-call]
    else:
        await redis.publish(channel, message)


def queue_publish(pipe: Pipeline, channel: str, message: bytes | str, sharded: bool) -> None:
    """Queue a PUBLISH (SPUBLISH when ``sharded``) on ``pipe``."""
    if sharded:
        pipe.execute_command("SPUBLISH", channel, message)
    else:
        pipe.publish(channel, message)


class _TimedSend(AbstractConnection):
    """A connection that bounds a send with ``asyncio.timeout`` instead of ``asyncio.wait_for``.

    redis-py wraps every send in ``asyncio.wait_for`` when a socket timeout is set, and on
    Python 3.11 that starts a task per command: two more trips through the event loop for every
    round trip, which under load queue behind every other ready callback (the API process spent
    tens of milliseconds of a request's TTFT there; see bench/notes.md). The bound is the same.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout = self.socket_timeout
        if not timeout or sys.version_info >= (3, 12):  # 3.12's wait_for starts no task
            await super().send_packed_command(command, check_health)
            return
        self.socket_timeout = None  # super() then writes in place, without wait_for
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class _TimedConnection(_TimedSend, Connection):
    pass


class _TimedSSLConnection(_TimedSend, SSLConnection):
    pass


class _TimedUnixConnection(_TimedSend, UnixDomainSocketConnection):
    pass


_TIMED_SENDS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TimedConnection,
    SSLConnection: _TimedSSLConnection,
    UnixDomainSocketConnection: _TimedUnixConnection,
}


class _UnlockedPool(ConnectionPool):
    """redis-py's pool, handing out a connected connection without a trip through the loop.

    Since 5.3, ``ConnectionPool.get_connection`` holds a pool-wide ``asyncio.Lock`` while it
    checks that the connection has no unread data, and the check reads the socket with a zero
    timeout: every command of the process waits for one event-loop iteration behind that lock
    (redis-py issue #3692; arq keeps llmspool on redis-py 5). Under load the API queued for tens
    of milliseconds there before each XADD. Here a connected connection is checked in place: no
    bytes buffered by its stream reader or its reply parser (a cancelled command disconnects
    its connection, so leftovers are rare); anything else takes redis-py's own path.
    """

    async def get_connection(
        self, command_name: str | None = None, *keys: object, **options: object
    ) -> AbstractConnection:
        # redis-py leaves get_available_connection unannotated
        connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        if connection.is_connected and _clean(connection):
            return connection
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


def _clean(connection: AbstractConnection) -> bool:
    """No data is waiting on ``connection`` (what redis-py's check reads the socket for)."""
    stream = getattr(connection, "_reader", None)
    if stream is None or stream.at_eof() or getattr(stream, "_buffer", b""):
        return False
    reader = getattr(getattr(connection, "_parser", None), "_reader", None)
    has_data = getattr(reader, "has_data", None)
    return not (has_data is not None and has_data())
