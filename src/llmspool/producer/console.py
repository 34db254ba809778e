"""The operator console: ``GET /console`` (one static page) and the JSON it polls.

``GET /admin/console/state`` gathers, per configured model, the live workers (registry), the
queue (:func:`~llmspool.shared.backlog.queue_stats`, the numbers ``llmspool queue`` prints, and
the dead stream's newest entries), the control state (pin, offline, the control loop's desired
worker count) and the TTFT/throughput timeline. It also says which optional routes
this API serves (batches, request log, feedback, scaling, drain, requeue), so the page shows an
action or a section only where the route behind it exists, and "not available" otherwise.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import operations
from llmspool.producer.service import Producer, get_producer
from llmspool.producer.timeline import Series, read_series
from llmspool.shared import controlstate, keys
from llmspool.shared.backlog import QueueStats, queue_stats
from llmspool.shared.config import ModelConfig
from llmspool.shared.messages import decode_fields
from llmspool.shared.registry import WorkerInfo, live_workers

STATIC = Path(__file__).parent / "static"

#: Dead entries shown per model (the newest).
DEAD_SHOWN = 5

#: Optional routes the page can use, by feature name: (method, path; parameter names do not
#: matter, ``{}`` stands for any).
FEATURES: dict[str, tuple[str, str]] = {
    "batches": ("GET", "/v1/batches"),
    "cancel_batch": ("POST", "/v1/batches/{}/cancel"),
    "requests": ("GET", "/admin/requests"),
    "feedback": ("POST", "/v1/feedback"),
    "scale": ("POST", "/admin/models/{}/scale"),
    "drain": ("POST", "/admin/workers/{}/drain"),
    "requeue": ("POST", "/admin/models/{}/dead/{}/requeue"),
}
_PARAMETER = re.compile(r"\{[^}]*\}")

router = APIRouter()
ProducerDep = Annotated[Producer, Depends(get_producer)]


class StreamState(BaseModel):
    """One work stream and its consumer group, as XINFO GROUPS reports it."""

    length: int = 0
    lag: int = 0
    pending: int = 0


class DeadEntry(BaseModel):
    """A job in the dead stream."""

    id: str
    fields: dict[str, str]


class QueueState(BaseModel):
    """A model's queues: backlog = undelivered (lag) + in flight (pending), both streams."""

    requests: StreamState
    batch: StreamState
    oldest_age: float | None
    dead: int
    dead_recent: list[DeadEntry]


class ModelState(BaseModel):
    """Everything the console shows about one model."""

    name: str
    backend: str
    min_workers: int
    max_workers: int
    max_concurrency: int
    pin: int | None
    offline: bool
    desired_workers: int | None
    workers: list[WorkerInfo]
    queue: QueueState
    backlog: int
    series: Series


class ConsoleState(BaseModel):
    """The JSON the console polls."""

    now: float
    #: The running control loop's driver (``local``, ``kubernetes``), None when none runs.
    controller: str | None
    features: dict[str, bool]
    models: list[ModelState]


def install(app: FastAPI) -> None:
    """Serve the console page, its assets and its state route on ``app``."""
    app.include_router(router)
    app.mount("/console/assets", StaticFiles(directory=STATIC), name="console-assets")


@router.get("/console", include_in_schema=False)
async def console_page() -> FileResponse:
    """The operator console (a static page that polls /admin/console/state)."""
    return FileResponse(STATIC / "console.html", headers={"cache-control": "no-cache"})


@router.get("/admin/console/state", response_model=ConsoleState)
async def console_state(request: Request, producer: ProducerDep) -> ConsoleState:
    """Models, workers, queues, pool decisions and timelines, for the console to draw."""
    redis, names = producer.redis, producer.config.names()
    workers = await live_workers(redis)
    controls = await controlstate.model_controls(redis, names)
    controller = await operations.controller_state(redis)
    models = [
        await _model_state(redis, m, workers, controls[m.name], controller)
        for m in producer.config.models
    ]
    return ConsoleState(
        now=time.time(),
        controller=controller.driver,
        features=features(request.app),
        models=models,
    )


def features(app: FastAPI) -> dict[str, bool]:
    """Which optional routes this app serves, read from its OpenAPI schema (built once)."""
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    served = {
        (method.upper(), _PARAMETER.sub("{}", path))
        for path, operations in paths.items()
        for method in operations
    }
    return {name: route in served for name, route in FEATURES.items()}


async def _model_state(
    redis: Redis,
    model: ModelConfig,
    workers: list[WorkerInfo],
    ctl: controlstate.ModelControl,
    controller: operations.ControllerState,
) -> ModelState:
    stats = await queue_stats(redis, model.name)
    return ModelState(
        name=model.name,
        backend=model.backend,
        min_workers=model.min_workers,
        max_workers=model.max_workers,
        max_concurrency=model.max_concurrency,
        pin=ctl.pin,
        offline=ctl.offline,
        desired_workers=controller.desired.get(model.name),
        workers=[w for w in workers if w.model == model.name],
        queue=await _queue_state(redis, stats),
        backlog=stats.backlog,
        series=await read_series(redis, model.name),
    )


async def _queue_state(redis: Redis, stats: QueueStats) -> QueueState:
    """The queue numbers (as ``llmspool queue`` shows them) and the newest dead jobs."""
    recent: list[Any] = await redis.xrevrange(keys.dead_stream(stats.model), count=DEAD_SHOWN)
    return QueueState(
        requests=StreamState(**stats.requests.model_dump(include={"length", "lag", "pending"})),
        batch=StreamState(**stats.batch.model_dump(include={"length", "lag", "pending"})),
        oldest_age=stats.oldest_age(),
        dead=stats.dead,
        dead_recent=[DeadEntry(id=_text(i), fields=decode_fields(f)) for i, f in recent],
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
