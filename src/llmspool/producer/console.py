"""The operator console: ``GET /console`` (one static page) and the JSON it polls.

``GET /admin/console/state`` gathers, per configured model, the live workers (registry), the
queue (consumer-group lag and pending of the interactive and batch streams, the dead stream's
length and last entries) and the TTFT/throughput timeline. It also says which optional routes
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
from redis.exceptions import ResponseError

from llmspool.producer.service import Producer, get_producer
from llmspool.producer.timeline import Series, read_series
from llmspool.shared import keys
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
    """One work stream's consumer group, as XINFO GROUPS reports it."""

    length: int = 0
    lag: int = 0
    pending: int = 0


class DeadEntry(BaseModel):
    """A job in the dead stream."""

    id: str
    fields: dict[str, str]


class QueueState(BaseModel):
    """A model's queues: backlog = undelivered (lag) + in flight (pending)."""

    requests: StreamState
    batch: StreamState
    dead: int
    dead_recent: list[DeadEntry]

    @property
    def backlog(self) -> int:
        return self.requests.lag + self.requests.pending + self.batch.lag + self.batch.pending


class ModelState(BaseModel):
    """Everything the console shows about one model."""

    name: str
    backend: str
    min_workers: int
    max_workers: int
    max_concurrency: int
    desired_workers: int | None
    scale_mode: str | None
    workers: list[WorkerInfo]
    queue: QueueState
    backlog: int
    series: Series


class ConsoleState(BaseModel):
    """The JSON the console polls."""

    now: float
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
    """Models, workers, queues and timelines, for the console to draw."""
    workers = await live_workers(producer.redis)
    models = [await _model_state(producer.redis, m, workers) for m in producer.config.models]
    return ConsoleState(now=time.time(), features=features(request.app), models=models)


def features(app: FastAPI) -> dict[str, bool]:
    """Which optional routes this app serves, read from its OpenAPI schema (built once)."""
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    served = {
        (method.upper(), _PARAMETER.sub("{}", path))
        for path, operations in paths.items()
        for method in operations
    }
    return {name: route in served for name, route in FEATURES.items()}


async def _model_state(redis: Redis, model: ModelConfig, workers: list[WorkerInfo]) -> ModelState:
    queue = await queue_state(redis, model.name)
    return ModelState(
        name=model.name,
        backend=model.backend,
        min_workers=model.min_workers,
        max_workers=model.max_workers,
        max_concurrency=model.max_concurrency,
        desired_workers=None,
        scale_mode=None,
        workers=[w for w in workers if w.model == model.name],
        queue=queue,
        backlog=queue.backlog,
        series=await read_series(redis, model.name),
    )


async def queue_state(redis: Redis, model: str) -> QueueState:
    """Lag and pending of both work streams, and the dead stream's size and newest entries."""
    dead_key = keys.dead_stream(model)
    recent: list[Any] = await redis.xrevrange(dead_key, count=DEAD_SHOWN)
    return QueueState(
        requests=await _stream_state(redis, keys.requests_stream(model)),
        batch=await _stream_state(redis, keys.batch_stream(model)),
        dead=await redis.xlen(dead_key),
        dead_recent=[DeadEntry(id=_text(i), fields=decode_fields(f)) for i, f in recent],
    )


async def _stream_state(redis: Redis, stream: str) -> StreamState:
    try:
        groups: list[dict[Any, Any]] = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return StreamState()
    length = await redis.xlen(stream)
    group = next((g for g in groups if _text(g.get("name", b"")) == keys.GROUP), None)
    if group is None:
        return StreamState(length=length, lag=length)
    lag = group.get("lag")
    pending = int(group.get("pending") or 0)
    # Redis reports no lag when it cannot tell (entries deleted); undelivered <= length.
    return StreamState(length=length, lag=int(lag) if lag is not None else length, pending=pending)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
