"""One pub/sub connection per producer process, multiplexing every request's reply channel.

A reader task owns the connection and routes each message into the asyncio queue of the
request it belongs to. :meth:`ReplyRelay.subscribe` returns once the SUBSCRIBE is written to
Redis (enough when the publisher can only start after a later command, as with a job enqueued
after it) or, with ``confirm``, once Redis has confirmed the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from llmspool.shared import keys
from llmspool.shared.errors import ServiceUnavailable
from llmspool.shared.redis import UNAVAILABLE, is_cluster
from llmspool.shared.shardpubsub import ShardSubscriber

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0


class ReplyRelay:
    """Routes reply-channel messages to per-request queues over one subscription."""

    def __init__(self, redis: Redis, producer_id: str) -> None:
        self._redis = redis
        self._home = keys.producer_channel(producer_id)
        self._pubsub: PubSub | None = None
        self._shards: ShardSubscriber | None = None
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.messages = 0

    async def start(self) -> None:
        if is_cluster(self._redis):  # sharded channels, one connection per owning shard
            self._shards = ShardSubscriber(cast(RedisCluster, self._redis), self._route_shard)
            return
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._home)
        self._reader = asyncio.create_task(self._read_forever(), name="reply-relay")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._shards is not None:
            await self._shards.close()

    @property
    def listening(self) -> int:
        """Requests currently waiting for replies."""
        return len(self._queues)

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
        if self._pubsub is None:
            raise ServiceUnavailable("the reply relay is not running")
        await getattr(self._pubsub, verb)(channel)

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection comes back; pubsub re-subscribes
                log.warning("reply relay lost redis: %s", exc)
                await asyncio.sleep(0.2)

    async def _read(self) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        while True:
            # A bounded wait: with no message for a while an unbounded read would hit the
            # socket timeout; a lost connection reconnects here and re-subscribes every channel.
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                self._route(message)

    def _route_shard(self, kind: str, channel: bytes, payload: Any) -> None:
        self._route({"type": kind, "channel": channel, "data": payload})

    def _route(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "message":
            queue = self._queues.get(channel)
            if queue is not None:
                self.messages += 1
                queue.put_nowait(message["data"])
        elif kind == "subscribe":
            confirmed = self._confirmations.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
