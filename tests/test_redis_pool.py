"""The Redis client every llmspool process uses: its pool hands out clean connections."""

from __future__ import annotations

import asyncio

from llmspool.shared.redis import connect
from llmspool.shared.settings import Settings
from tests.helpers import RedisServer


async def test_a_connection_with_an_unread_reply_is_not_handed_out(
    clean_redis: RedisServer,
) -> None:
    redis = connect(Settings(redis_url=clean_redis.url))
    try:
        await redis.set("k", "v")
        pool = redis.connection_pool
        dirty = await pool.get_connection()
        await dirty.send_command("PING")  # its reply is never read
        await pool.release(dirty)
        await asyncio.sleep(0.05)  # the reply has reached the connection's buffer
        assert await redis.get("k") == b"v"  # not the stale PONG
        assert await redis.ping()
    finally:
        await redis.aclose()


async def test_commands_from_many_tasks_at_once(clean_redis: RedisServer) -> None:
    redis = connect(Settings(redis_url=clean_redis.url))
    try:
        results = await asyncio.gather(*(redis.incr("n") for _ in range(200)))
        assert sorted(results) == list(range(1, 201))
        assert len(redis.connection_pool._available_connections) >= 1
    finally:
        await redis.aclose()
