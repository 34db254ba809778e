"""One pub/sub connection per producer process, multiplexing every request's reply channel.

A reader task owns the connection and routes each message into the asyncio queue of the
request it belongs to. :meth:`ReplyRelay.subscribe` returns once the SUBSCRIBE is written to
Redis (enough when the publisher can only start after a later command, as with a job enqueued
after it) or, with ``confirm``, once Redis has confirmed the subscription.

The connection is a plain redis-py :class:`~redis.asyncio.connection.Connection` (so TLS, ACL
users and RESP versions work as for every other command) read message by message, without
redis-py's ``PubSub`` layer: that layer costs a timeout context, a health check and a retry
wrapper per message, which made it the largest single cost of relaying a frame. Liveness is
checked here instead: a PING every ``KEEPALIVE`` seconds, and a connection that has said
nothing for three of them is dropped and opened again, with every channel subscribed again.
Frames published while it was away are read from the reply log (see dispatch.Reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from llmspool.shared import keys
from llmspool.shared.errors import ServiceUnavailable
from llmspool.shared.redis import UNAVAILABLE, is_cluster
from llmspool.shared.shardpubsub import ShardSubscriber

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0
#: Seconds between PINGs on the subscribed connection; three silent ones drop it.
KEEPALIVE = 5.0
#: Channels per SUBSCRIBE when subscribing everything again after a reconnect.
_RESUBSCRIBE_BATCH = 500


class ReplyRelay:
    """Routes reply-channel messages to per-request queues over one subscription."""

    def __init__(self, redis: Redis, producer_id: str) -> None:
        self._redis = redis
        self._home = keys.producer_channel(producer_id)
        self._conn: AbstractConnection | None = None
        self._shards: ShardSubscriber | None = None
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._heard_at = 0.0
        self._up = asyncio.Event()  # connected, and the followed channels subscribed
        self.messages = 0

    async def start(self) -> None:
        if is_cluster(self._redis):  # sharded channels, one connection per owning shard
            self._shards = ShardSubscriber(cast(RedisCluster, self._redis), self._route_shard)
            return
        pool = self._redis.connection_pool
        # no socket timeout: an idle subscription is normal; liveness is the keepalive's job
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "health_check_interval": 0}
        self._conn = pool.connection_class(**kwargs)
        await self._open()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_forever(), name="reply-relay"),
            loop.create_task(self._keepalive(), name="reply-relay-keepalive"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            await self._conn.disconnect()
        if self._shards is not None:
            await self._shards.close()

    async def subscribe(self, channel: str, confirm: bool = True) -> asyncio.Queue[bytes]:
        """Start routing ``channel`` into a new queue; with ``confirm``, return once Redis
        has confirmed the subscription, else once the SUBSCRIBE is written."""
        name = channel.encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[name] = queue
        confirmed = asyncio.get_running_loop().create_future()
        if confirm:
            self._confirmations[name] = confirmed
        try:
            await self._command("subscribe", channel)
            if confirm:
                await asyncio.wait_for(confirmed, SUBSCRIBE_TIMEOUT)
        except (TimeoutError, *UNAVAILABLE) as exc:
            self._forget(name)
            raise ServiceUnavailable(
                f"cannot subscribe to replies: redis unavailable ({exc})"
            ) from exc
        finally:
            self._confirmations.pop(name, None)
        return queue

    async def unsubscribe(self, channel: str) -> None:
        self._forget(channel.encode())
        with contextlib.suppress(*UNAVAILABLE):
            await self._command("unsubscribe", channel)

    def _forget(self, name: bytes) -> None:
        self._queues.pop(name, None)

    async def _command(self, verb: str, channel: str) -> None:
        if self._shards is not None:
            await getattr(self._shards, verb)(channel)
            return
        await self._send(verb.upper(), channel)

    async def _send(self, *args: str | bytes, wait: float = SUBSCRIBE_TIMEOUT) -> None:
        """Write one command; while the reader task reconnects, wait up to ``wait`` s."""
        conn = self._conn
        if conn is None:
            raise ServiceUnavailable("the reply relay is not running")
        if not (self._up.is_set() and conn.is_connected):
            async with asyncio.timeout(wait):
                await self._up.wait()
        await conn.send_packed_command(conn.pack_command(*args), check_health=False)

    async def _open(self) -> None:
        """Connect, and subscribe the home channel and every channel being followed."""
        conn = self._conn
        assert conn is not None
        await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        self._heard_at = asyncio.get_running_loop().time()
        channels: list[str | bytes] = [self._home, *self._queues]
        for i in range(0, len(channels), _RESUBSCRIBE_BATCH):
            batch = channels[i : i + _RESUBSCRIBE_BATCH]
            await conn.send_packed_command(conn.pack_command("SUBSCRIBE", *batch))
        self._up.set()

    async def _read_forever(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                if not conn.is_connected:
                    await self._open()
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect, subscribe again; the reply log has the gap
                log.warning("reply relay lost redis: %s", exc)
                self._up.clear()
                await conn.disconnect(nowait=True)
                await asyncio.sleep(0.2)

    async def _read(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await conn.read_response(disconnect_on_error=False, push_request=True)
            self._heard_at = loop.time()
            if isinstance(message, list) and len(message) >= 3:
                self._route_parts(message[0], message[1], message[2])

    async def _keepalive(self) -> None:
        """PING the subscribed connection; drop it when it has been silent too long (a peer
        gone without closing the socket would otherwise leave the reader waiting forever)."""
        conn = self._conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEPALIVE)
            if not conn.is_connected:
                continue
            if loop.time() - self._heard_at > 3 * KEEPALIVE:
                log.warning("reply relay: redis silent for %.0f s; reconnecting", 3 * KEEPALIVE)
                self._up.clear()
                await conn.disconnect(nowait=True)
                continue
            with contextlib.suppress(TimeoutError, ServiceUnavailable, *UNAVAILABLE):
                await self._send("PING", wait=0)

    def _route_shard(self, kind: str, channel: bytes, payload: Any) -> None:
        self._route_parts(kind.encode(), channel, payload)

    def _route_parts(self, kind: bytes, channel: bytes, data: Any) -> None:
        if kind == b"message":
            queue = self._queues.get(channel)
            if queue is not None:
                self.messages += 1
                queue.put_nowait(data)
        elif kind == b"subscribe":
            confirmed = self._confirmations.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
