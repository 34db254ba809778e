"""Control state that operators set and the control loop, API and workers act on.

All of it lives in Redis (names in :mod:`llmspool.shared.keys`), so the command line, the admin
API and the control loop may run in different processes or on different machines:

- ``llmspool:{<model>}:control`` (hash): ``pin`` — a worker count an operator pinned;
  ``offline`` — "1" while new requests are refused with 503; ``restart`` — a counter bumped to
  ask for a rolling restart.
- ``llmspool:drain:<worker_id>`` (string with a TTL): ``drain`` (finish running jobs, then exit)
  or ``stop`` (exit now; running jobs are handed back unacknowledged).
- ``llmspool:reload`` (hash): ``requested`` / ``applied`` counters and the last ``result``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import commands, keys

DrainMode = Literal["drain", "stop"]

#: A drain request not picked up by then is dropped (its worker is gone anyway).
DRAIN_TTL_SECONDS = 60


class ModelControl(BaseModel):
    """What operators asked of one model."""

    pin: int | None = None
    offline: bool = False
    restart: int = 0

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> ModelControl:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        pin = fields.get("pin")
        return cls(
            pin=int(pin) if pin not in (None, "") else None,
            offline=fields.get("offline") == "1",
            restart=int(fields.get("restart") or 0),
        )


async def model_controls(redis: Redis, models: list[str]) -> dict[str, ModelControl]:
    """The control state of each of ``models``, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for model in models:
        pipe.hgetall(keys.control(model))
    replies = await pipe.execute()
    return {m: ModelControl.from_hash(r or {}) for m, r in zip(models, replies, strict=True)}


async def set_pin(redis: Redis, model: str, workers: int | None) -> None:
    """Pin ``model`` to ``workers`` (None: back to autoscaling)."""
    if workers is None:
        await commands.hdel(redis, keys.control(model), "pin")
    else:
        await commands.hset(redis, keys.control(model), {"pin": str(workers)})


async def set_offline(redis: Redis, model: str, offline: bool) -> None:
    if offline:
        await commands.hset(redis, keys.control(model), {"offline": "1"})
    else:
        await commands.hdel(redis, keys.control(model), "offline")


async def request_restart(redis: Redis, model: str) -> int:
    """Ask for a rolling restart of ``model``'s workers; returns the restart generation."""
    return await commands.hincrby(redis, keys.control(model), "restart")


async def request_drain(redis: Redis, worker_id: str, mode: DrainMode) -> None:
    await redis.set(keys.drain(worker_id), mode, ex=DRAIN_TTL_SECONDS)


async def drain_requested(redis: Redis, worker_id: str) -> DrainMode | None:
    value = await redis.get(keys.drain(worker_id))
    if value is None:
        return None
    return "stop" if _text(value) == "stop" else "drain"


class ReloadStatus(BaseModel):
    """Reload requests and what the control loop made of the last one."""

    requested: int = 0
    applied: int = 0
    result: str = ""


async def request_reload(redis: Redis) -> int:
    """Ask the control loop to re-read the models file; returns the request number."""
    return await commands.hincrby(redis, keys.RELOAD, "requested")


async def reload_status(redis: Redis) -> ReloadStatus:
    raw = await commands.hgetall(redis, keys.RELOAD)
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return ReloadStatus(
        requested=int(fields.get("requested") or 0),
        applied=int(fields.get("applied") or 0),
        result=fields.get("result", ""),
    )


async def record_reload(redis: Redis, applied: int, result: str) -> None:
    await commands.hset(redis, keys.RELOAD, {"applied": str(applied), "result": result})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
