"""Observability routes: Prometheus ``/metrics``, ``POST /v1/feedback``, the request-log reader."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from llmspool.producer import queue_metrics
from llmspool.producer.service import Producer, get_producer
from llmspool.shared import operations, requestlog
from llmspool.shared.errors import InvalidRequest
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.requestlog import Feedback, RequestRecord

log = logging.getLogger(__name__)

router = APIRouter()
ProducerDep = Annotated[Producer, Depends(get_producer)]

#: A scrape never waits on Redis longer than this; the queue families then read redis_up 0.
SCRAPE_REDIS_TIMEOUT = 2.0


@router.get("/metrics", include_in_schema=False)
async def metrics(producer: ProducerDep) -> Response:
    """Prometheus exposition: this process' request metrics and the queue gauges read now."""
    body = generate_latest(producer.observer.metrics.registry)
    body += generate_latest(await _queue_registry(producer))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _queue_registry(producer: Producer) -> CollectorRegistry:
    collectors = CollectorRegistry()
    names = producer.config.names()
    try:
        snapshot = await asyncio.wait_for(
            _with_desired(
                producer, queue_metrics.snapshot(producer.redis, producer.registry, names)
            ),
            SCRAPE_REDIS_TIMEOUT,
        )
        collectors.register(queue_metrics.QueueCollector(snapshot))
    except (TimeoutError, *UNAVAILABLE) as exc:
        log.warning("metrics: cannot read queues: %s", exc)
        collectors.register(queue_metrics.QueueCollector([], redis_up=False))
    return collectors


class TargetGroup(BaseModel):
    """One group of Prometheus' HTTP service discovery: a model's workers."""

    targets: list[str]
    labels: dict[str, str]


class RequestList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RequestRecord]


@router.get("/admin/metrics/targets")
async def metrics_targets(producer: ProducerDep) -> list[TargetGroup]:
    """Live workers' own /metrics, in Prometheus' HTTP service-discovery format
    (``http_sd_configs``), grouped by model."""
    by_model: dict[str, list[str]] = {}
    for worker in await producer.registry.live_workers():
        if worker.metrics:
            by_model.setdefault(worker.model, []).append(worker.metrics)
    return [
        TargetGroup(targets=sorted(targets), labels={"model_name": model})
        for model, targets in sorted(by_model.items())
    ]


async def _with_desired(
    producer: Producer, reading: Awaitable[list[queue_metrics.ModelQueues]]
) -> list[queue_metrics.ModelQueues]:
    """The snapshot, with the worker counts the live control loop wants (when one runs)."""
    snapshot = await reading
    desired = (await operations.controller_state(producer.redis)).desired
    return [dataclasses.replace(m, desired=desired.get(m.model)) for m in snapshot]


@router.post("/v1/feedback")
async def feedback(body: Feedback, producer: ProducerDep) -> JSONResponse:
    """Attach a rating (and a comment) to a request, by the id its reply carried."""
    if not body.request_id.isprintable() or " " in body.request_id:
        raise InvalidRequest("request_id is not a request id", param="request_id")
    await producer.observer.request_log.add_feedback(body)
    return JSONResponse({"object": "feedback", **body.model_dump()})


@router.get("/admin/requests")
async def list_requests(
    producer: ProducerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    model: str | None = None,
    outcome: str | None = None,
) -> RequestList:
    """The newest request-log records (newest first), feedback attached."""
    records = await requestlog.recent(producer.redis, limit, model=model, outcome=outcome)
    return RequestList(data=records)


@router.get("/admin/requests/{request_id}")
async def get_request(request_id: str, producer: ProducerDep) -> RequestRecord:
    """One request-log record, feedback attached."""
    record = await requestlog.find(producer.redis, request_id)
    if record is None:
        raise HTTPException(404, f"No request-log record for '{request_id}'.")
    return record
