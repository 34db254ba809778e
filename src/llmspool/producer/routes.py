"""The OpenAI routes: chat completions, completions, embeddings, models; and /health."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from llmspool.producer import responses
from llmspool.producer.dispatch import Reply
from llmspool.producer.service import Producer, get_producer
from llmspool.shared import registry
from llmspool.shared.config import Capability, ModelConfig
from llmspool.shared.errors import LLMSpoolError, UnsupportedCapability, UnsupportedParameter
from llmspool.shared.logs import request_id
from llmspool.shared.messages import Job, JobKind, ReplyFrame
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorResponse,
    Model,
    ModelList,
    ModelStatus,
    unsupported_parameters,
)
from llmspool.shared.redis import UNAVAILABLE

router = APIRouter()
ProducerDep = Annotated[Producer, Depends(get_producer)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 429, 500, 503, 504)
}


@router.post("/v1/chat/completions", response_model=None, responses=_ERRORS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, producer: ProducerDep
) -> Response:
    """Create a chat completion, streamed (SSE) or not."""
    reply = await _submit(producer, body, JobKind.CHAT, "chatcmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(reply, chat=True, include_usage=include_usage)
    text, final = await _collect(request, reply)
    return JSONResponse(responses.chat_completion(reply, text, final).model_dump())


@router.post("/v1/completions", response_model=None, responses=_ERRORS)
async def completions(body: CompletionRequest, request: Request, producer: ProducerDep) -> Response:
    """Create a text completion, streamed (SSE) or not."""
    reply = await _submit(producer, body, JobKind.COMPLETION, "cmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(reply, chat=False, include_usage=include_usage)
    text, final = await _collect(request, reply)
    return JSONResponse(responses.completion(reply, text, final).model_dump())


@router.post("/v1/embeddings", response_model=None, responses=_ERRORS)
async def embeddings(body: EmbeddingRequest, request: Request, producer: ProducerDep) -> Response:
    """Embed one text or a list of texts."""
    reply = await _submit(producer, body, JobKind.EMBEDDING, "embd")
    _, final = await _collect(request, reply)
    vectors = final.embeddings or []
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = final.usage.model_dump() if final.usage else {"prompt_tokens": 0, "total_tokens": 0}
    usage.pop("completion_tokens", None)
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


@router.get("/v1/models", response_model=ModelList)
async def list_models(producer: ProducerDep) -> ModelList:
    """The configured models; each one's ``llmspool`` field says its backend, what it serves
    and how many workers serve it now."""
    live = await _live_workers(producer)
    return ModelList(data=[_model_card(m, live) for m in producer.config.models])


@router.get("/v1/models/{model:path}", response_model=Model, responses=_ERRORS)
async def get_model(model: str, producer: ProducerDep) -> Model:
    """One configured model."""
    return _model_card(producer.config.model(model), await _live_workers(producer))


@router.get("/health")
async def health(producer: ProducerDep) -> Response:
    """200 when this API process can reach Redis, 503 otherwise."""
    try:
        await asyncio.wait_for(producer.redis.ping(), timeout=2)
    except (TimeoutError, *UNAVAILABLE) as exc:
        return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok"})


# --------------------------------------------------------------------------- helpers

_KIND_CAPABILITY: dict[JobKind, Capability] = {
    JobKind.CHAT: "chat",
    JobKind.COMPLETION: "completion",
    JobKind.EMBEDDING: "embedding",
}


async def _submit(
    producer: Producer,
    body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
    kind: JobKind,
    prefix: str,
) -> Reply:
    model = producer.config.model(body.model)
    job = Job(
        request_id=f"{prefix}-{uuid.uuid4().hex}",
        kind=kind,
        model=model.name,
        body=body,
        enqueued_at=time.time(),
        deadline=producer.dispatcher.deadline(model),
    )
    request_id.set(job.request_id)
    trace = producer.observer.trace(job, model.backend)
    try:
        _check(body, model, kind)
        return await producer.dispatcher.submit(job, trace)
    except BaseException as exc:  # refused before a worker saw it: still one log record
        if isinstance(exc, LLMSpoolError):
            trace.fail(exc)
        trace.finish()
        raise


def _check(body: Any, model: ModelConfig, kind: JobKind) -> None:
    for param in unsupported_parameters(body):
        raise UnsupportedParameter(
            f"'{param}' is not supported by llmspool's engines; remove it from the request.",
            param=param,
        )
    capability = _KIND_CAPABILITY[kind]
    if capability not in model.capabilities:
        raise UnsupportedCapability(
            f"The model '{model.name}' does not serve {capability} requests "
            f"(it serves: {', '.join(model.capabilities)}).",
            param="model",
        )
    max_tokens = getattr(body, "requested_max_tokens", lambda: None)()
    if max_tokens is not None and max_tokens > model.context_length:
        raise UnsupportedParameter(
            f"max_tokens is {max_tokens}, above this model's context length "
            f"{model.context_length}.",
            param="max_tokens",
            code="invalid_value",
        )


def _stream(reply: Reply, *, chat: bool, include_usage: bool) -> EventSourceResponse:
    writer = responses.ChunkWriter(reply, chat=chat, include_usage=include_usage)
    return EventSourceResponse(
        responses.sse_events(reply, writer),
        sep="\n",
        headers={"x-request-id": reply.job.request_id},
    )


async def _collect(request: Request, reply: Reply) -> tuple[str, ReplyFrame]:
    """Wait for the whole reply; a client that goes away cancels the job."""
    collecting = asyncio.ensure_future(reply.collect())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collecting.done():
            collecting.cancel()
            raise asyncio.CancelledError("client disconnected")
        text, final = collecting.result()
    finally:
        gone.cancel()
        await reply.close()
    if final.error is not None:
        raise final.error.to_exception()
    return text, final


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _encode(vector: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


async def _live_workers(producer: Producer) -> Counter[str] | None:
    """Live workers per model from the registry; None when Redis cannot say."""
    try:
        workers = await asyncio.wait_for(registry.live_workers(producer.redis), timeout=2)
    except (TimeoutError, *UNAVAILABLE):
        return None
    return Counter(worker.model for worker in workers)


def _model_card(model: ModelConfig, live: Counter[str] | None) -> Model:
    status = ModelStatus(
        backend=model.backend,
        capabilities=list(model.capabilities),
        workers=None if live is None else live[model.name],
    )
    return Model(id=model.name, created=0, llmspool=status)
