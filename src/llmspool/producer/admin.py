"""The admin API (JSON under ``/admin``): the operator's views and actions.

The same operations as the command line (:mod:`llmspool.shared.operations`). Every route depends
on :func:`llmspool.producer.auth.require_admin`: with API keys on, only a key with the admin scope
gets in (the auth middleware checks the same scope for every path under ``/admin``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmspool.producer.auth import require_admin
from llmspool.producer.service import Producer, get_producer
from llmspool.shared import operations
from llmspool.shared.controlstate import ReloadStatus
from llmspool.shared.operations import ControllerState, ModelStatus, Requeued
from llmspool.shared.protocol import ErrorResponse
from llmspool.shared.registry import WorkerInfo

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
ProducerDep = Annotated[Producer, Depends(get_producer)]
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 503)
}


class ModelsView(BaseModel):
    object: str = "list"
    data: list[ModelStatus]
    controller: ControllerState


class WorkersView(BaseModel):
    object: str = "list"
    data: list[WorkerInfo]


class ScaleRequest(BaseModel):
    """Pin a worker count (``workers``) or return to autoscaling (``auto``: true)."""

    # The spec says what the validator below enforces: exactly one of the two.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["workers"],
                    "properties": {"workers": {"type": "integer"}, "auto": {"const": False}},
                },
                {
                    "required": ["auto"],
                    "properties": {"workers": {"type": "null"}, "auto": {"const": True}},
                },
            ]
        }
    )

    workers: int | None = Field(default=None, ge=0)
    auto: bool = False

    @model_validator(mode="after")
    def _one(self) -> ScaleRequest:
        if (self.workers is None) == (not self.auto):
            raise ValueError("give either 'workers' or 'auto': true")
        return self


class RestartView(BaseModel):
    model: str
    restart: int


class ReloadRequest(BaseModel):
    # strict: a string such as "5" is refused, as the spec's type says
    model_config = ConfigDict(strict=True)

    wait: float = Field(default=10.0, ge=0, le=120, description="Seconds to wait for the result.")


@router.get("/models", response_model=ModelsView)
async def models(producer: ProducerDep) -> ModelsView:
    """Every model: bounds, pin, offline flag, desired and live workers, queue depth."""
    data = await operations.models_status(producer.redis, producer.registry, producer.config)
    state = await operations.controller_state(producer.redis)
    return ModelsView(data=data, controller=state)


@router.get("/workers", response_model=WorkersView)
async def workers(producer: ProducerDep, model: str | None = None) -> WorkersView:
    """Live workers (from the registry), with their in-flight counts."""
    return WorkersView(data=await producer.registry.live_workers(model))


@router.post("/workers/{worker:path}/drain", response_model=WorkerInfo, responses=_ERRORS)
async def drain_worker(worker: str, producer: ProducerDep) -> WorkerInfo:
    """Ask a worker to finish its running jobs and exit (the pool replaces it if needed)."""
    return await operations.drain_worker(producer.redis, producer.registry, worker, "drain")


@router.post("/workers/{worker:path}/stop", response_model=WorkerInfo, responses=_ERRORS)
async def stop_worker(worker: str, producer: ProducerDep) -> WorkerInfo:
    """Ask a worker to exit now; its running jobs go back to the queue."""
    return await operations.drain_worker(producer.redis, producer.registry, worker, "stop")


@router.post("/models/{model:path}/scale", response_model=ModelStatus, responses=_ERRORS)
async def scale(model: str, body: ScaleRequest, producer: ProducerDep) -> ModelStatus:
    """Pin the model's worker count, or hand it back to the autoscaler."""
    workers = None if body.auto else body.workers
    return await operations.scale(
        producer.redis, producer.registry, producer.config, model, workers
    )


@router.post("/models/{model:path}/offline", response_model=ModelStatus, responses=_ERRORS)
async def offline(model: str, producer: ProducerDep) -> ModelStatus:
    """New requests get 503 model_offline; queued and running ones are still served."""
    status = await operations.set_offline(
        producer.redis, producer.registry, producer.config, model, True
    )
    await producer.control.refresh()
    return status


@router.post("/models/{model:path}/online", response_model=ModelStatus, responses=_ERRORS)
async def online(model: str, producer: ProducerDep) -> ModelStatus:
    """Take requests for the model again."""
    status = await operations.set_offline(
        producer.redis, producer.registry, producer.config, model, False
    )
    await producer.control.refresh()
    return status


@router.post("/models/{model:path}/restart", response_model=RestartView, responses=_ERRORS)
async def restart(model: str, producer: ProducerDep) -> RestartView:
    """Rolling restart of the model's workers; no request is lost."""
    number = await operations.restart(producer.redis, producer.config, model)
    return RestartView(model=model, restart=number)


@router.post(
    "/models/{model:path}/dead/{entry_id}/requeue", response_model=Requeued, responses=_ERRORS
)
async def requeue(
    model: str,
    entry_id: Annotated[str, Path(pattern=r"^[0-9]+-[0-9]+$")],
    producer: ProducerDep,
) -> Requeued:
    """Put a dead job back on its work stream with a fresh deadline; nobody waits for its reply."""
    return await operations.requeue_dead(
        producer.redis, producer.config, model, entry_id, producer.settings.request_timeout
    )


@router.get("/models/{model:path}", response_model=ModelStatus, responses=_ERRORS)
async def model(model: str, producer: ProducerDep) -> ModelStatus:
    """One model (as in ``GET /admin/models``)."""
    return await operations.model_status(producer.redis, producer.registry, producer.config, model)


@router.post("/reload", response_model=ReloadStatus)
async def reload(producer: ProducerDep, body: ReloadRequest | None = None) -> ReloadStatus:
    """Ask the control loop to re-read the models file; answers with its result."""
    status = await operations.reload(producer.redis, (body or ReloadRequest()).wait)
    await producer.control.refresh()
    return status
