"""The OpenAI routes: chat completions, completions, embeddings, models; and /health.

llmspool's own request extensions are HTTP headers, so request bodies stay OpenAI's:

- ``X-LLMSpool-Timeout: <seconds>``: this request's deadline (else the model's ``timeout``,
  else ``LLMSPOOL_REQUEST_TIMEOUT``); a request not served by then gets a 504.
- ``Idempotency-Key: <text>``: a repeat of the request (same body) returns the first one's
  reply instead of enqueueing again, from any API process, while the reply log is kept.

and two routes follow a request some API process already enqueued, by its id (the ``id`` of
its completion): ``GET /v1/requests/{id}/events`` (SSE, resumable with ``Last-Event-ID``) and
``GET /v1/requests/{id}`` (the whole reply, waiting for it if needed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
import uuid
from collections import Counter
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from llmspool.producer import auth, responses
from llmspool.producer.dispatch import Dispatcher, Reply
from llmspool.producer.observe import RequestTrace
from llmspool.producer.service import Producer, get_producer
from llmspool.producer.sse import EventStream
from llmspool.shared import capabilities, keys
from llmspool.shared.checks import check_request, check_size
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    InvalidRequest,
    LLMSpoolError,
    ModelOffline,
    RegistryUnavailable,
    ServiceUnavailable,
)
from llmspool.shared.logs import request_id
from llmspool.shared.messages import Job, JobKind, ReplyFrame, RequestBody
from llmspool.shared.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorResponse,
    Health,
    Model,
    ModelList,
    ModelServing,
)
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.registry import WorkerInfo
from llmspool.shared.tokens import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()
ProducerDep = Annotated[Producer, Depends(get_producer)]

# FastAPI's type for a route's documented responses
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 429, 500, 503, 504)
}
TIMEOUT_HEADER = "x-llmspool-timeout"
_ENQUEUE_TIMEOUTS = 3  # enqueueing may take this many Redis command timeouts
IDEMPOTENCY_HEADER = "idempotency-key"
#: What the OpenAPI spec promises: the JSON object, or with `stream: true` an SSE stream.
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
_SSE = {"text/event-stream": {"schema": _SSE_EVENT}}
_CHAT = {200: {"model": ChatCompletion, "content": _SSE}, **_ERRORS}
_COMPLETION = {200: {"model": Completion, "content": _SSE}, **_ERRORS}
_EMBEDDINGS = {200: {"model": EmbeddingList}, **_ERRORS}
_EVENTS = {200: {"description": "The reply as SSE chunks.", "content": _SSE}, **_ERRORS}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body (a JSON fragment, as FastAPI's ``openapi_extra`` takes it) of a
    route that parses its own body (see :func:`_parse`); app._openapi adds the model's schema
    to the spec's components."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


BODY_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest)
M = TypeVar("M", bound=BaseModel)


async def _parse(request: Request, model: type[M]) -> M:
    """The request body as ``model``, parsed and validated in one step by pydantic's JSON
    parser: FastAPI's body handling (stdlib json, then validation, content-type parsing with
    the email package) was a tenth of the API's CPU per request. Errors are FastAPI's
    (RequestValidationError), so they become the same 400 bodies."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=_CHAT,
    openapi_extra=_json_body(ChatCompletionRequest),
)
async def chat_completions(request: Request, producer: ProducerDep) -> Response:
    """Create a chat completion, streamed (SSE) or not."""
    body = await _parse(request, ChatCompletionRequest)
    reply = await submit(producer, request, body, JobKind.CHAT, "chatcmpl-")
    if body.stream:
        return _stream(reply)
    return await _whole(request, reply)


@router.post(
    "/v1/completions",
    response_model=None,
    responses=_COMPLETION,
    openapi_extra=_json_body(CompletionRequest),
)
async def completions(request: Request, producer: ProducerDep) -> Response:
    """Create a text completion, streamed (SSE) or not."""
    body = await _parse(request, CompletionRequest)
    reply = await submit(producer, request, body, JobKind.COMPLETION, "cmpl-")
    if body.stream:
        return _stream(reply)
    return await _whole(request, reply)


@router.post("/v1/embeddings", response_model=None, responses=_EMBEDDINGS)
async def embeddings(body: EmbeddingRequest, request: Request, producer: ProducerDep) -> Response:
    """Embed one text or a list of texts."""
    reply = await submit(producer, request, body, JobKind.EMBEDDING, "embd-")
    _, final = await collect(request, reply)
    return _embedding_list(reply, final, body.encoding_format)


@router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
async def tokenize(
    body: TokenizeRequest, request: Request, producer: ProducerDep
) -> TokenizeResponse:
    """vLLM's ``/tokenize``: a prompt's (or chat's) token ids, by the model's workers."""
    reply = await submit(producer, request, body, JobKind.TOKENIZE, "tok-")
    _, final = await collect(request, reply)
    tokens = final.token_ids or []
    length = _context_length(producer.config.model(body.model), await _live_workers(producer))
    return TokenizeResponse(count=len(tokens), max_model_len=length, tokens=tokens)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
async def detokenize(
    body: DetokenizeRequest, request: Request, producer: ProducerDep
) -> DetokenizeResponse:
    """vLLM's ``/detokenize``: the text of token ids, by the model's workers."""
    reply = await submit(producer, request, body, JobKind.DETOKENIZE, "detok-")
    text, _ = await collect(request, reply)
    return DetokenizeResponse(prompt=text)


@router.get(
    "/v1/requests/{request_id}/events",
    response_model=None,
    responses=_EVENTS,
)
async def request_events(
    request_id: str,
    request: Request,
    producer: ProducerDep,
    # the spec says what parse_event_id accepts: attempt.seq.k
    last_event_id: Annotated[str, Header(pattern=r"^(\d+\.\d+\.\d+)?$")] = "",
) -> Response:
    """The reply of an enqueued request as SSE chunks, from the event after
    ``Last-Event-ID`` (from the start without it)."""
    after = responses.parse_event_id(last_event_id)
    reply = await producer.dispatcher.follow(request_id, auth.visible_owner(request))
    return _stream(reply, after)


@router.get("/v1/requests/{request_id}", response_model=None, responses=_ERRORS)
async def request_result(request_id: str, request: Request, producer: ProducerDep) -> Response:
    """The whole reply of an enqueued request, once it is finished."""
    reply = await producer.dispatcher.follow(request_id, auth.visible_owner(request))
    return await _whole(request, reply)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request, producer: ProducerDep) -> ModelList:
    """The configured models (those the request's API key may use), with the context length
    their engine reports (``max_model_len``); each one's ``llmspool`` field says its backend,
    what it serves, the features and parameters it honours and how many workers serve it now."""
    key = auth.current_key(request)
    models = [m for m in producer.config.models if key is None or key.allows(m.name)]
    live = await _live_workers(producer)
    return ModelList(data=[_model_card(producer, m, live) for m in models])


@router.get("/v1/models/{model:path}", response_model=Model, responses=_ERRORS)
async def get_model(model: str, request: Request, producer: ProducerDep) -> Model:
    """One configured model."""
    config = producer.config.model(model)
    auth.check_model(request, config.name)
    return _model_card(producer, config, await _live_workers(producer))


@router.get(
    "/health",
    response_model=None,
    responses={200: {"model": Health}, 503: {"model": Health}},
)
async def health(producer: ProducerDep) -> Response:
    """200 when this API process can reach Redis, 503 otherwise."""
    try:
        await asyncio.wait_for(producer.redis.ping(), timeout=2)
    except (TimeoutError, *UNAVAILABLE) as exc:
        return JSONResponse({"status": "unavailable", "redis": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok"})


# --------------------------------------------------------------------------- helpers


async def submit(
    producer: Producer,
    request: Request,
    body: RequestBody,
    kind: JobKind,
    prefix: str,
) -> Reply:
    """Check ``body`` for its model and enqueue it as a job of ``kind`` whose request id is
    ``prefix`` and a random hex; returns its reply (4xx errors raised before enqueueing)."""
    model = producer.config.model(body.model)
    dispatcher = producer.dispatcher
    auth.check_model(request, model.name)
    api_key = auth.current_key(request)
    job = Job(
        request_id=f"{prefix}{uuid.uuid4().hex}",
        kind=kind,
        model=model.name,
        body=body,
        enqueued_at=time.time(),
        deadline=dispatcher.deadline(model, _timeout(request)),
        tenant=api_key.id if api_key is not None else keys.ANONYMOUS_TENANT,
    )
    request_id.set(job.request_id)
    key = _idempotency_key(request, job)
    weight = api_key.weight if api_key is not None else 1.0
    try:
        # A stalled Redis can make one command's reconnects and health checks add up: bound
        # the whole enqueueing, so the client gets a 503 instead of waiting for Redis.
        async with asyncio.timeout(producer.settings.redis_timeout * _ENQUEUE_TIMEOUTS):
            reply = await _enqueue(producer, model, kind, job, key, weight)
    except TimeoutError:
        raise ServiceUnavailable("cannot enqueue: redis does not answer") from None
    auth.track(request, reply)
    return reply


async def _enqueue(
    producer: Producer,
    model: ModelConfig,
    kind: JobKind,
    job: Job,
    key: str | None,
    weight: float,
) -> Reply:
    dispatcher = producer.dispatcher
    if key is not None and (first := await dispatcher.remember(key, job)) is not None:
        return await dispatcher.follow(first)  # a repeat: the first request's reply
    trace = producer.observer.trace(job, model.backend)
    try:
        check_request(job.body, model, kind)
        if producer.control.is_offline(model.name):
            raise ModelOffline(model.name)
        check_size(job.body, producer.settings)
        return await _submitted(dispatcher, job, trace, key, model, weight)
    except BaseException as exc:  # refused before a worker saw it: still one log record
        if isinstance(exc, LLMSpoolError):
            trace.fail(exc)
        trace.finish()
        if key is not None:
            with contextlib.suppress(Exception):
                await dispatcher.forget(key)
        raise


async def _submitted(
    dispatcher: Dispatcher,
    job: Job,
    trace: RequestTrace,
    key: str | None,
    model: ModelConfig,
    weight: float,
) -> Reply:
    try:
        return await dispatcher.submit(job, model, trace, key, weight)
    except PydanticSerializationError:
        raise InvalidRequest(
            "The request holds text that is not valid Unicode (a lone surrogate).",
            code="invalid_unicode",
        ) from None


def _timeout(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e7:
        raise InvalidRequest(
            f"{TIMEOUT_HEADER} must be a positive number of seconds, not '{raw}'.",
            param=TIMEOUT_HEADER,
        )
    return seconds


def _idempotency_key(request: Request, job: Job) -> str | None:
    """The Redis name of the request's Idempotency-Key: one API key's values are its own."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= 255:
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 characters.", param=IDEMPOTENCY_HEADER
        )
    return keys.idempotency(job.tenant or keys.ANONYMOUS_TENANT, key)


def _stream(reply: Reply, after: responses.EventId | None = None) -> EventStream:
    # on SIGTERM, open streams may finish for uvicorn's graceful-shutdown timeout (runner.py)
    writer = responses.ChunkWriter(reply.meta)
    return EventStream(
        responses.sse_events(reply, writer, after), headers={"x-request-id": reply.request_id}
    )


async def _whole(request: Request, reply: Reply) -> Response:
    """The reply as one OpenAI object: chat completion, completion or embedding list."""
    frames = await collect_frames(request, reply)
    final = frames[-1]
    if reply.meta.kind is JobKind.CHAT:
        return JSONResponse(responses.chat_completion(reply, frames, final).model_dump())
    if reply.meta.kind is JobKind.COMPLETION:
        return JSONResponse(responses.completion(reply, frames, final).model_dump())
    return _embedding_list(reply, final, None)


def _embedding_list(reply: Reply, final: ReplyFrame, encoding_format: str | None) -> Response:
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, encoding_format)}
        for i, v in enumerate(final.embeddings or [])
    ]
    usage = final.usage.model_dump() if final.usage else {"prompt_tokens": 0, "total_tokens": 0}
    usage.pop("completion_tokens", None)
    body = {"object": "list", "data": data, "model": reply.meta.model, "usage": usage}
    return JSONResponse(body)


async def collect(request: Request, reply: Reply) -> tuple[str, ReplyFrame]:
    """Wait for the whole reply; a client that goes away cancels the job."""
    frames = await collect_frames(request, reply)
    return "".join(frame.text for frame in frames), frames[-1]


async def collect_frames(request: Request, reply: Reply) -> list[ReplyFrame]:
    """Wait for the whole reply's frames; a client that goes away cancels the job."""
    collecting = asyncio.ensure_future(reply.collect_frames())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collecting.done():
            collecting.cancel()
            raise asyncio.CancelledError("client disconnected")
        frames = collecting.result()
    finally:
        gone.cancel()
        await reply.close()
    if frames[-1].error is not None:
        raise frames[-1].error.to_exception()
    return frames


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _encode(vector: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class _Live:
    """What the registry says of each model: live workers, and the context length they report."""

    def __init__(self, workers: list[WorkerInfo]) -> None:
        self.workers = Counter(worker.model for worker in workers)
        self.lengths: dict[str, int] = {}
        for worker in workers:
            if worker.max_model_len:
                known = self.lengths.get(worker.model, worker.max_model_len)
                self.lengths[worker.model] = min(known, worker.max_model_len)


async def _live_workers(producer: Producer) -> _Live | None:
    """Live workers per model from the registry; None when the registry cannot say."""
    try:
        workers = await asyncio.wait_for(producer.registry.live_workers(), timeout=2)
    except (TimeoutError, RegistryUnavailable, *UNAVAILABLE):
        return None
    return _Live(workers)


def _model_card(producer: Producer, model: ModelConfig, live: _Live | None) -> Model:
    caps = capabilities.of(model.backend)
    status = ModelServing(
        backend=model.backend,
        capabilities=list(model.capabilities),
        features=caps.features,
        parameters=caps.listed(),
        workers=None if live is None else live.workers[model.name],
        status="offline" if producer.control.is_offline(model.name) else "online",
    )
    length = _context_length(model, live)
    return Model(id=model.name, created=0, max_model_len=length, llmspool=status)


def _context_length(model: ModelConfig, live: _Live | None) -> int | None:
    """The model's context length: what its engines report, or the configured limit where it
    is the smaller; None when neither is known."""
    length = live.lengths.get(model.name) if live is not None else None
    if model.context_length:
        length = min(length or model.context_length, model.context_length)
    return length
