"""The operator console: ``GET /console`` (one static page) and the JSON it polls.

``GET /admin/console/state`` gathers, per configured model, its status as ``/admin/models`` and
``llmspool models`` show it (:class:`~llmspool.shared.operations.ModelStatus`: live workers,
queue, pin, offline, the control loop's desired worker count), the dead stream's newest entries
and the TTFT/throughput timeline. It also says which optional routes
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

from llmspool.producer.service import Producer, get_producer
from llmspool.producer.timeline import Series, read_series
from llmspool.shared import keys, operations
from llmspool.shared.errors import RegistryUnavailable
from llmspool.shared.messages import decode_fields
from llmspool.shared.operations import ModelStatus

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


class DeadEntry(BaseModel):
    """A job in the dead stream."""

    id: str
    fields: dict[str, str]


class ConsoleModel(ModelStatus):
    """One model as the console draws it: its status (as ``/admin/models`` gives it), the
    newest dead jobs and the TTFT/throughput timeline."""

    dead_recent: list[DeadEntry]
    series: Series


class ConsoleState(BaseModel):
    """The JSON the console polls."""

    now: float
    #: The running control loop's driver (``local``, ``kubernetes``), None when none runs.
    controller: str | None
    features: dict[str, bool]
    models: list[ConsoleModel]
    #: Why the worker registry could not be read (its workers then show as none); None: it was.
    registry_error: str | None = None


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
    redis = producer.redis
    controller = await operations.controller_state(redis)
    status, registry_error = await _models_status(producer)
    return ConsoleState(
        now=time.time(),
        controller=controller.driver,
        features=features(request.app),
        models=[await _console_model(redis, model) for model in status],
        registry_error=registry_error,
    )


async def _models_status(producer: Producer) -> tuple[list[ModelStatus], str | None]:
    """The models' status; while an external registry (etcd) is unreachable, without workers
    and with the reason (the queues are still worth drawing)."""
    redis, config = producer.redis, producer.config
    try:
        return await operations.models_status(redis, producer.registry, config), None
    except RegistryUnavailable as exc:
        return await operations.models_status(redis, None, config), exc.message


def features(app: FastAPI) -> dict[str, bool]:
    """Which optional routes this app serves, read from its OpenAPI schema (built once)."""
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})  # FastAPI's schema type
    served = {
        (method.upper(), _PARAMETER.sub("{}", path))
        for path, methods in paths.items()
        for method in methods
    }
    return {name: route in served for name, route in FEATURES.items()}


async def _console_model(redis: Redis, status: ModelStatus) -> ConsoleModel:
    recent: list[Any] = await redis.xrevrange(keys.dead_stream(status.name), count=DEAD_SHOWN)
    return ConsoleModel(
        **dict(status),
        dead_recent=[DeadEntry(id=_text(i), fields=decode_fields(f)) for i, f in recent],
        series=await read_series(redis, status.name),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
