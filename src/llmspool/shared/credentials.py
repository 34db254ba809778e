"""API keys: created, listed and revoked by the command line, looked up by the API.

A key is shown once, at creation; Redis keeps only its SHA-256 digest (keys carry 256 random
bits, so a plain digest is enough: there is nothing to brute-force). Each key has a scope
(``user`` or ``admin``) and its own limits; 0 means unlimited, no models means every model. Its
``weight`` is its share of a model's turns when several keys wait for the same model
(shared/tenants.py); its id names its tenant.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from llmspool.shared import commands, keys

KEY_PREFIX = "sk-llmspool-"

Scope = Literal["user", "admin"]


class ApiKey(BaseModel):
    """What Redis holds about one key (never the key itself)."""

    id: str
    name: str = ""
    scope: Scope = "user"
    rpm: int = Field(default=0, ge=0, description="requests per minute; 0: unlimited")
    tpm: int = Field(default=0, ge=0, description="tokens per minute; 0: unlimited")
    concurrency: int = Field(default=0, ge=0, description="requests at once; 0: unlimited")
    models: tuple[str, ...] = ()
    weight: float = Field(
        default=1.0, gt=0, description="share of a model's turns when keys compete for it"
    )
    created: float = Field(default_factory=time.time)

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model``."""
        return not self.models or model in self.models

    def to_hash(self) -> dict[str, str]:
        data = self.model_dump()
        data["models"] = ",".join(self.models)
        return {name: str(value) for name, value in data.items()}

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes] | dict[str, str]) -> ApiKey:
        fields = {_text(k): _text(v) for k, v in data.items()}
        models = tuple(m for m in fields.pop("models", "").split(",") if m)
        return cls.model_validate({**fields, "models": models})


def digest(secret: str) -> str:
    """The SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create(redis: Redis, **fields: Any) -> tuple[str, ApiKey]:
    """Store a new key; returns the key (shown once) and its record."""
    secret = new_secret()
    hashed = digest(secret)
    record = ApiKey(id=hashed[:12], **fields)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.api_key(hashed), mapping=record.to_hash())
        pipe.hset(keys.API_KEY_INDEX, record.id, hashed)
        await pipe.execute()
    return secret, record


async def lookup(redis: Redis, secret: str) -> ApiKey | None:
    """The record of ``secret``, or None when it is unknown or revoked."""
    data = await commands.hgetall(redis, keys.api_key(digest(secret)))
    return ApiKey.from_hash(data) if data else None


async def by_id(redis: Redis, key_id: str) -> ApiKey | None:
    """The record of the key with id ``key_id``, or None when there is none (revoked)."""
    hashed = await redis.hget(keys.API_KEY_INDEX, key_id)  # type: ignore[misc]
    if hashed is None:
        return None
    data = await redis.hgetall(keys.api_key(_text(hashed)))  # type: ignore[misc]
    return ApiKey.from_hash(data) if data else None


async def list_keys(redis: Redis) -> list[ApiKey]:
    """Every live key, oldest first."""
    index = await commands.hgetall(redis, keys.API_KEY_INDEX)
    records = []
    for hashed in index.values():
        data = await commands.hgetall(redis, keys.api_key(_text(hashed)))
        if data:
            records.append(ApiKey.from_hash(data))
    return sorted(records, key=lambda r: r.created)


async def revoke(redis: Redis, key_id: str) -> bool:
    """Delete the key with id ``key_id``; False when there is none. Takes effect at once."""
    hashed = await commands.hget(redis, keys.API_KEY_INDEX, key_id)
    if hashed is None:
        return False
    await redis.delete(keys.api_key(_text(hashed)))
    await commands.hdel(redis, keys.API_KEY_INDEX, key_id)
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
