"""Operator actions and views, shared by the command line and the admin API.

Everything here talks to Redis (and the worker registry) only: the control loop (``llmspool
serve``, or a cluster's controller) and the workers act on what is written, whichever machine
they run on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import commands, controlstate, keys
from llmspool.shared.backlog import QueueSummary, queue_stats
from llmspool.shared.config import Config, parse_config
from llmspool.shared.controlstate import DrainMode, ReloadStatus
from llmspool.shared.errors import ConfigError, InvalidRequest, NoControlLoop, NotFound
from llmspool.shared.messages import decode_fields
from llmspool.shared.registry import Registry, WorkerInfo


class ControllerState(BaseModel):
    """What the running control loop last published (None fields: no control loop runs)."""

    driver: str | None = None
    beat: float | None = None
    desired: dict[str, int] = {}


class ModelStatus(BaseModel):
    """One model as an operator sees it: in ``llmspool models``, ``/admin/models`` and the
    console (which adds its timeline)."""

    name: str
    backend: str
    min_workers: int
    max_workers: int
    max_concurrency: int
    target_per_worker: int
    #: The worker count an operator pinned; None: autoscaled.
    pin: int | None
    offline: bool
    #: The running control loop's last decision; None when no control loop runs.
    desired: int | None
    workers: list[WorkerInfo]
    queue: QueueSummary


async def controller_state(redis: Redis) -> ControllerState:
    raw = await commands.hgetall(redis, keys.CONTROLLER)
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return ControllerState()
    desired = {k.split(":", 1)[1]: int(v) for k, v in fields.items() if k.startswith("desired:")}
    return ControllerState(driver=fields.get("driver"), beat=float(fields["beat"]), desired=desired)


async def effective_config(redis: Redis, local: Config) -> Config:
    """The models the running control loop serves (after reloads), else ``local``."""
    return await published_config(redis) or local


async def published_config(redis: Redis) -> Config | None:
    """The models file a live control loop published, or None."""
    if not await redis.exists(keys.CONTROLLER):
        return None
    raw: Any = await redis.get(keys.CONFIG)
    if raw is None:
        return None
    try:
        return parse_config(json.loads(raw), source="published models file")
    except ConfigError:
        return None


async def models_status(
    redis: Redis, registry: Registry | None, config: Config
) -> list[ModelStatus]:
    """Every model with its workers (from ``registry``; None: not read, none shown), queue and
    control state."""
    controls = await controlstate.model_controls(redis, config.names())
    live = await registry.live_workers() if registry is not None else []
    state = await controller_state(redis)
    result = []
    for model in config.models:
        stats = await queue_stats(redis, model.name)
        ctl = controls[model.name]
        result.append(
            ModelStatus(
                name=model.name,
                backend=model.backend,
                min_workers=model.min_workers,
                max_workers=model.max_workers,
                max_concurrency=model.max_concurrency,
                target_per_worker=model.target_per_worker,
                pin=ctl.pin,
                offline=ctl.offline,
                desired=state.desired.get(model.name),
                workers=[w for w in live if w.model == model.name],
                queue=stats.summary(),
            )
        )
    return result


async def model_status(redis: Redis, registry: Registry, config: Config, name: str) -> ModelStatus:
    model = config.model(name)
    return (await models_status(redis, registry, Config(models=[model])))[0]


async def scale(
    redis: Redis, registry: Registry, config: Config, name: str, workers: int | None
) -> ModelStatus:
    """Pin ``name`` to ``workers`` (0..max_workers), or return it to autoscaling (None)."""
    model = config.model(name)
    if workers is not None and not 0 <= workers <= model.max_workers:
        raise InvalidRequest(
            f"cannot pin '{name}' to {workers} workers: allowed 0..{model.max_workers} "
            "(raise max_workers in the models file and reload)",
            param="workers",
        )
    await controlstate.set_pin(redis, model.name, workers)
    return await model_status(redis, registry, config, name)


async def set_offline(
    redis: Redis, registry: Registry, config: Config, name: str, offline: bool
) -> ModelStatus:
    """Take ``name`` out of service (new requests get 503; queued and running ones finish)."""
    model = config.model(name)
    await controlstate.set_offline(redis, model.name, offline)
    return await model_status(redis, registry, config, name)


async def restart(redis: Redis, config: Config, name: str) -> int:
    """Ask the running control loop for a rolling restart of ``name``'s workers."""
    model = config.model(name)
    if (await controller_state(redis)).driver is None:
        raise NoControlLoop()  # a loop started later ignores older restart requests
    return await controlstate.request_restart(redis, model.name)


async def find_worker(registry: Registry, ident: str) -> WorkerInfo:
    """A live worker by id, or by a part of its id that matches exactly one."""
    live = await registry.live_workers()
    exact = [w for w in live if w.id == ident]
    matches = exact or [w for w in live if ident in w.id]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f"no live worker matches '{ident}'", param="worker")
    raise InvalidRequest(
        f"'{ident}' matches {len(matches)} workers; give more of the id", param="worker"
    )


async def drain_worker(redis: Redis, registry: Registry, ident: str, mode: DrainMode) -> WorkerInfo:
    """Ask one worker to drain (finish its jobs) or stop (hand them back) and exit."""
    info = await find_worker(registry, ident)
    await controlstate.request_drain(redis, info.id, mode)
    return info


async def reload(redis: Redis, wait: float) -> ReloadStatus:
    """Ask the control loop to re-read the models file; wait up to ``wait`` s for its answer."""
    number = await controlstate.request_reload(redis)
    deadline = time.monotonic() + wait
    while True:
        status = await controlstate.reload_status(redis)
        if status.applied >= number or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(0.1)


#: Fields the dead stream adds to a job (``consumers/delivery.py``); a requeued job drops them.
DEAD_FIELDS = frozenset({"error", "attempts", "source_stream", "source_id", "failed_at"})
_ENTRY_ID = re.compile(r"^[0-9]+-[0-9]+$")

#: Move one dead entry onto a work stream, only while it is still in the dead stream (two
#: operators pressing "requeue" at once enqueue it once). Both keys share the model's hash tag.
_REQUEUE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
"""


class Requeued(BaseModel):
    """A dead job put back on a work stream."""

    model: str
    dead_id: str
    stream: str
    id: str
    request_id: str | None


async def requeue_dead(
    redis: Redis, config: Config, name: str, dead_id: str, timeout: float
) -> Requeued:
    """Put dead job ``dead_id`` of ``name`` back on the stream it came from, with a fresh
    deadline (the model's timeout, else ``timeout`` seconds), and remove it from the dead stream.
    Its client got an error long ago: nobody waits for the new reply."""
    model = config.model(name)
    if not _ENTRY_ID.match(dead_id):
        raise InvalidRequest(f"'{dead_id}' is not a stream entry id", param="entry_id")
    dead = keys.dead_stream(model.name)
    in_range = all(int(part) < 2**64 for part in dead_id.split("-"))
    found: list[Any] = await redis.xrange(dead, min=dead_id, max=dead_id) if in_range else []
    if not found:
        raise NotFound(f"no dead job '{dead_id}' of model '{model.name}'", param="entry_id")
    fields = decode_fields(found[0][1])
    stream = fields.get("source_stream", "")
    if stream not in keys.model_streams(model.name):
        stream = keys.requests_stream(model.name)
    job = {k: v for k, v in fields.items() if k not in DEAD_FIELDS}
    now = time.time()
    job.update(enqueued_at=f"{now:.6f}", deadline=f"{now + (model.timeout or timeout):.6f}")
    args = [value for pair in job.items() for value in pair]
    new_id = await commands.run_script(redis, _REQUEUE, [dead, stream], [dead_id, *args])
    if new_id is None:
        raise NotFound(f"dead job '{dead_id}' was requeued or removed meanwhile", param="entry_id")
    return Requeued(
        model=model.name,
        dead_id=dead_id,
        stream=stream,
        id=_text(new_id),
        request_id=job.get("request_id"),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
