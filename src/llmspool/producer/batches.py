"""The Files and Batch APIs: ``/v1/files`` (purpose ``batch``) and ``/v1/batches``.

Files live in Redis (``keys.file``); a batch is created in ``validating`` and its lifecycle
runs as arq jobs in ``llmspool batch-worker`` (see ``llmspool.batch.steps``). These routes
only store, read and enqueue.

With API keys on, files and batches belong to the key that made them (a batch's output and
error files to the batch's key): another key neither lists nor reads, deletes or cancels them
(404, as if they did not exist). A key with the admin scope sees everything.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import Response

from llmspool.batch.models import Batch, BatchCreateRequest, FileDeleted, FileObject, Page
from llmspool.batch.queue import FINALIZE, VALIDATE, enqueue_step
from llmspool.batch.store import BatchStore
from llmspool.producer.auth import current_key
from llmspool.producer.service import Producer, get_producer
from llmspool.shared.errors import InvalidRequest, NotFound
from llmspool.shared.protocol import ErrorResponse

router = APIRouter()
ProducerDep = Annotated[Producer, Depends(get_producer)]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 503)
}
_READ_CHUNK = 1 << 20


def _store(producer: Producer) -> BatchStore:
    return BatchStore(producer.redis)


def _owner(request: Request) -> str:
    """Who new files and batches belong to: the request's key ("" with keys off)."""
    key = current_key(request)
    return key.id if key is not None else ""


def _weight(request: Request) -> float:
    """The share of the turns the batch's lines get (its key's weight; 1 with keys off)."""
    key = current_key(request)
    return key.weight if key is not None else 1.0


def _visible_to(request: Request) -> str | None:
    """The owner whose files and batches the request may see; None: everyone's (keys off, or
    a key with the admin scope)."""
    key = current_key(request)
    return None if key is None or key.admin else key.id


# --------------------------------------------------------------------------- files


@router.post("/v1/files", response_model=FileObject, responses=_ERRORS)
async def create_file(
    request: Request,
    producer: ProducerDep,
    file: UploadFile,
    # only "batch" is stored: the spec says so, so a fuzzer does not expect other purposes to pass
    purpose: Annotated[str, Form(pattern="^batch$")],
) -> FileObject:
    """Upload a JSONL batch input file (``purpose=batch``)."""
    if purpose != "batch":
        raise InvalidRequest(
            f"llmspool stores files for the Batch API only: purpose must be 'batch', "
            f"not '{purpose}'.",
            param="purpose",
            code="invalid_value",
        )
    content = await _read_limited(file, producer.settings.batch_max_file_bytes)
    now = int(time.time())
    meta = FileObject(
        id=f"file-{uuid.uuid4().hex}",
        bytes=len(content),
        created_at=now,
        expires_at=now + int(producer.settings.batch_retention),
        filename=file.filename or "upload.jsonl",
        purpose=purpose,
    )
    await _store(producer).put_file(meta, content, _owner(request))
    return meta


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await file.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(
                f"The file is larger than {limit} bytes, the most a batch input file may be.",
                param="file",
                code="file_too_large",
            )
        parts.append(chunk)
    if not size:
        raise InvalidRequest("The file is empty.", param="file", code="empty_file")
    return b"".join(parts)


@router.get("/v1/files", response_model=Page, responses=_ERRORS)
async def list_files(
    request: Request,
    producer: ProducerDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> Page:
    """Stored files, newest first by default."""
    return await _store(producer).list_files(after, limit, order, purpose, _visible_to(request))


@router.get("/v1/files/{file_id}", response_model=FileObject, responses=_ERRORS)
async def retrieve_file(file_id: str, request: Request, producer: ProducerDep) -> FileObject:
    """One file's metadata."""
    return await _store(producer).file(file_id, _visible_to(request))


@router.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=_ERRORS)
async def delete_file(file_id: str, request: Request, producer: ProducerDep) -> FileDeleted:
    """Delete a file and its content."""
    store = _store(producer)
    await store.file(file_id, _visible_to(request))
    await store.delete_file(file_id)
    return FileDeleted(id=file_id)


@router.get(
    "/v1/files/{file_id}/content",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
    },
)
async def file_content(file_id: str, request: Request, producer: ProducerDep) -> Response:
    """A file's bytes (a batch's output and error files are JSONL)."""
    store = _store(producer)
    await store.file(file_id, _visible_to(request))
    content = await store.file_content(file_id)
    return Response(content, media_type="application/octet-stream")


# --------------------------------------------------------------------------- batches


@router.post("/v1/batches", response_model=Batch, responses=_ERRORS)
async def create_batch(body: BatchCreateRequest, request: Request, producer: ProducerDep) -> Batch:
    """Create a batch from an uploaded input file; it starts in ``validating``."""
    store = _store(producer)
    try:
        input_file = await store.file(body.input_file_id, _visible_to(request))
    except NotFound:
        raise NotFound(
            f"No such File object: {body.input_file_id}", param="input_file_id"
        ) from None
    if input_file.purpose != "batch":
        raise InvalidRequest(
            f"The file {input_file.id} has purpose '{input_file.purpose}', not 'batch'.",
            param="input_file_id",
            code="invalid_value",
        )
    batch_id = f"batch_{uuid.uuid4().hex}"
    now = time.time()
    fields = {
        "id": batch_id,
        "endpoint": body.endpoint,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "created_at": f"{now:.3f}",
        "expires_at": f"{now + producer.settings.batch_window:.3f}",
        "metadata": orjson.dumps(body.metadata).decode() if body.metadata is not None else "",
        "owner": _owner(request),
        "weight": f"{_weight(request):g}",
    }
    await store.create_batch(fields, now)
    await enqueue_step(producer.redis, VALIDATE, batch_id)
    return await store.batch(batch_id)


@router.get("/v1/batches", response_model=Page, responses=_ERRORS)
async def list_batches(
    request: Request,
    producer: ProducerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> Page:
    """Batches, newest first."""
    return await _store(producer).list_batches(after, limit, _visible_to(request))


@router.get("/v1/batches/{batch_id}", response_model=Batch, responses=_ERRORS)
async def retrieve_batch(batch_id: str, request: Request, producer: ProducerDep) -> Batch:
    """One batch, with its status and current request counts."""
    return await _store(producer).batch(batch_id, _visible_to(request))


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch, responses=_ERRORS)
async def cancel_batch(batch_id: str, request: Request, producer: ProducerDep) -> Batch:
    """Stop dispatching the batch's lines; lines already finished are kept. The batch is
    ``cancelling`` until its running lines finish, then ``cancelled``."""
    store = _store(producer)
    await store.batch(batch_id, _visible_to(request))
    state = await store.state(batch_id)
    moved = await store.transition(batch_id, "cancelling", allowed=("validating", "in_progress"))
    if not moved and state.status not in ("cancelling", "cancelled"):
        raise InvalidRequest(
            f"Cannot cancel a batch with status '{state.status}'.",
            param="batch_id",
            code="invalid_state",
        )
    await enqueue_step(producer.redis, FINALIZE, batch_id)
    return await store.batch(batch_id)
