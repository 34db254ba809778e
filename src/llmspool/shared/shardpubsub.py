"""Sharded pub/sub (SSUBSCRIBE/SPUBLISH) on a Redis Cluster, for redis-py's asyncio client.

On a cluster a plain PUBLISH is broadcast to every node over the cluster bus; SPUBLISH stays on
the shard that owns the channel's slot, so reply traffic spreads over the shards instead of
being copied to all of them. redis-py 5's asyncio ``RedisCluster`` has no pub/sub, so
:class:`ShardSubscriber` keeps one connection per shard that owns a subscribed channel, each
read by one task, and hands every message to a callback: still one connection per shard per
process, never one per request. A shard's connection that drops is reopened and its channels
subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisClusterException

from llmspool.shared.redis import UNAVAILABLE

log = logging.getLogger(__name__)

#: Called with (kind, channel, payload): kind is "message" or "subscribe".
Handler = Callable[[str, bytes, Any], None]

_KINDS = {b"smessage": "message", b"ssubscribe": "subscribe"}


class ShardSubscriber:
    """Routes sharded channels to one handler, over one connection per owning shard."""

    def __init__(self, cluster: RedisCluster, handler: Handler) -> None:
        self._cluster = cluster
        self._handler = handler
        self._shards: dict[str, _Shard] = {}

    async def subscribe(self, channel: str) -> None:
        await self._cluster.initialize()
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise RedisClusterException(f"no cluster node owns the slot of {channel}")
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(node, self._handler)
        await shard.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        for shard in self._shards.values():
            if channel in shard.channels:
                await shard.unsubscribe(channel)

    async def close(self) -> None:
        for shard in self._shards.values():
            await shard.close()
        self._shards.clear()


class _Shard:
    """One node's connection, its reader task and the channels subscribed on it."""

    def __init__(self, node: ClusterNode, handler: Handler) -> None:
        self._conn: AbstractConnection = node.connection_class(**node.connection_kwargs)
        self._handler = handler
        self._name = node.name
        self.channels: set[str] = set()
        self._reader: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        if self._reader is None:
            await self._conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            self._reader = asyncio.create_task(self._read_forever(), name=f"shard-{self._name}")
        await self._conn.send_command("SSUBSCRIBE", channel)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        with contextlib.suppress(*UNAVAILABLE):
            await self._conn.send_command("SUNSUBSCRIBE", channel)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._conn.disconnect()

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect and subscribe again
                log.warning("sharded pub/sub on %s lost: %s", self._name, exc)
                await asyncio.sleep(0.2)
                await self._resubscribe()

    async def _read(self) -> None:
        while True:
            response = await self._conn.read_response(timeout=None)
            if isinstance(response, list) and response and response[0] in _KINDS:
                self._handler(_KINDS[response[0]], response[1], response[2])

    async def _resubscribe(self) -> None:
        await self._conn.disconnect()
        with contextlib.suppress(*UNAVAILABLE):
            await self._conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            for channel in list(self.channels):
                await self._conn.send_command("SSUBSCRIBE", channel)
