"""Redis hash, set and script commands, awaited with the types the asyncio client returns.

redis-py annotates these commands once for its sync and asyncio clients (``Awaitable[T] | T``),
which mypy cannot await; the casts below are the one place that says what the asyncio client
returns, so their callers need no ``type: ignore``. Every client llmspool makes reads bytes
(``decode_responses=False``, :func:`llmspool.shared.redis.connect`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, cast

from redis.asyncio import Redis

Value = str | bytes | int | float


async def hgetall(redis: Redis, key: str) -> dict[bytes, bytes]:
    return await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(key))


async def hget(redis: Redis, key: str, field: str) -> bytes | None:
    return await cast(Awaitable[bytes | None], redis.hget(key, field))


async def hmget(redis: Redis, key: str, fields: list[str]) -> list[bytes | None]:
    return await cast(Awaitable[list[bytes | None]], redis.hmget(key, fields))


async def hset(redis: Redis, key: str, mapping: Mapping[str, Value]) -> int:
    return await cast(Awaitable[int], redis.hset(key, mapping=dict(mapping)))


async def hdel(redis: Redis, key: str, *fields: str) -> int:
    return await cast(Awaitable[int], redis.hdel(key, *fields))


async def hincrby(redis: Redis, key: str, field: str, amount: int = 1) -> int:
    return await cast(Awaitable[int], redis.hincrby(key, field, amount))


async def smembers(redis: Redis, key: str) -> set[bytes]:
    return await cast(Awaitable[set[bytes]], redis.smembers(key))


async def srem(redis: Redis, key: str, *members: str) -> int:
    return await cast(Awaitable[int], redis.srem(key, *members))


async def run_script(redis: Redis, script: str, keys: list[str], args: list[Any]) -> Any:
    """EVAL ``script``; what it returns is the script's own business (hence Any)."""
    return await cast(Awaitable[Any], redis.eval(script, len(keys), *keys, *args))
