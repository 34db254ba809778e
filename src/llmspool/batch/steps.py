"""The batch lifecycle as arq jobs: validate the input file, fan its lines out onto the model
streams, finalize the output and error files; a cron sweep expires, unsticks and purges.

Every step is idempotent and re-reads the batch's state from Redis, so arq may run a step
twice (a retry after a crash, or the sweep enqueueing it again) without harm. Each step's arq
job id is derived from the batch id, so enqueueing it while it waits or runs is a no-op.
Each line's inference is not an arq job: it goes through the model's batch stream like any
other request, and the worker records its result (see ``consumers/batching.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from arq import Retry, cron
from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis.asyncio import Redis

from llmspool.batch import results, throttle
from llmspool.batch.lines import Line, LineError, ParsedFile, job_kind, parse_file
from llmspool.batch.models import BatchError, BatchErrors, FileObject, Record
from llmspool.batch.queue import FAN_OUT, FINALIZE, VALIDATE, enqueue_step
from llmspool.batch.store import BatchState, BatchStore
from llmspool.shared import credentials, keys, tenants
from llmspool.shared.config import Config
from llmspool.shared.credentials import ApiKey
from llmspool.shared.errors import NotFound, PermissionDenied
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.settings import Settings

log = logging.getLogger(__name__)

#: Lines XADDed per pipelined round trip while fanning out.
FAN_OUT_CHUNK = 500

_PREFIXES = {JobKind.CHAT: "chatcmpl", JobKind.COMPLETION: "cmpl", JobKind.EMBEDDING: "embd"}

#: arq hands each job its context as a plain dict (redis, and what create_worker put in).
Ctx = dict[str, Any]


def _parts(ctx: Ctx) -> tuple[BatchStore, Settings, Config]:
    return BatchStore(ctx["redis"]), ctx["settings"], ctx["config"]


async def _parse(ctx: Ctx, state: BatchState) -> ParsedFile | None:
    """The batch's input file, read and checked; a line for a model its key may not use fails
    with the 403 the endpoint would answer."""
    store, settings, config = _parts(ctx)
    try:
        content = await store.file_content(state["input_file_id"])
    except NotFound:
        return None
    parsed = await asyncio.to_thread(parse_file, content, state["endpoint"], config, settings)
    key = await _owner_key(ctx, state)
    if key is not None:
        parsed.lines = [_allowed(line, key) for line in parsed.lines]
    return parsed


def _allowed(line: Line, key: ApiKey) -> Line:
    if line.body is None or key.allows(line.body.model):
        return line
    denied = PermissionDenied(
        f"This API key may not use the model '{line.body.model}'.",
        param="model",
        code="model_not_allowed",
    )
    error = LineError(denied.code or "", denied.message, "model", 403, denied.error_type)
    return Line(line.number, line.custom_id, error=error)


# --------------------------------------------------------------------------- validate


async def validate_batch(ctx: Ctx, batch_id: str) -> None:
    """Check the input file; record the lines that cannot run; move to ``in_progress``."""
    store = _parts(ctx)[0]
    state = await _state(store, batch_id)
    if state is None or state.status != "validating":
        return
    parsed = await _parse(ctx, state)
    if parsed is None:
        missing = BatchError(code="file_not_found", message="The input file no longer exists.")
        await _fail(store, batch_id, [missing])
        return
    if parsed.errors:
        await _fail(store, batch_id, parsed.errors)
        return
    await _record_progress_fields(store, batch_id, parsed)
    for line in parsed.lines:
        if line.error is not None:
            record = results.line_error_record(line.error)
            await store.record(batch_id, line.number, record, ok=False, tokens=(0, 0))
    if await store.transition(batch_id, "in_progress", allowed=("validating",)):
        await enqueue_step(ctx["redis"], FAN_OUT, batch_id)


async def _record_progress_fields(store: BatchStore, batch_id: str, parsed: ParsedFile) -> None:
    valid = parsed.valid
    fields = {
        "total": str(len(parsed.lines)),
        "model": ",".join(parsed.models),
        "valid_last": str(valid[-1].number if valid else 0),
    }
    await store.update(batch_id, fields)


async def _fail(store: BatchStore, batch_id: str, errors: list[BatchError]) -> None:
    await store.update(batch_id, {"errors": BatchErrors(data=errors).model_dump_json()})
    await store.transition(batch_id, "failed", allowed=("validating",))


# --------------------------------------------------------------------------- fan out


async def fan_out_batch(ctx: Ctx, batch_id: str) -> None:
    """Queue every valid line not yet queued onto its model's batch queue, in chunks, as far
    as the key's limits let (batch/throttle.py); the ``fanned`` cursor makes a repeated run (the
    sweep's, when throttled) continue where the last one stopped."""
    store = _parts(ctx)[0]
    state = await _state(store, batch_id)
    if state is None or state.status != "in_progress":
        return
    parsed = await _parse(ctx, state)
    key = await _owner_key(ctx, state)
    await throttle.charge(ctx["redis"], store, key, state)
    todo = [
        line for line in (parsed.valid if parsed else []) if line.number > state.count("fanned")
    ]
    for chunk in _chunks(todo, FAN_OUT_CHUNK):
        current = await _state(store, batch_id)
        if current is None or current.status != "in_progress":
            return  # cancelled or expired: stop dispatching
        if parsed is not None and key is not None and throttle.limited(key):
            chunk = await throttle.admit(ctx["redis"], key, current, parsed, chunk)
            if not chunk:
                return  # throttled: the sweep runs this step again
        await _enqueue_lines(ctx["redis"], state, chunk)
        await store.update(batch_id, {"fanned": str(chunk[-1].number)})
    final = await _state(store, batch_id)
    if final is not None and final.done >= final.count("total"):
        await enqueue_step(ctx["redis"], FINALIZE, batch_id)


async def _owner_key(ctx: Ctx, state: BatchState) -> ApiKey | None:
    """The API key that made the batch (None with keys off, or once it is revoked)."""
    owner = state.fields.get("owner")
    return await credentials.by_id(ctx["redis"], owner) if owner else None


async def _enqueue_lines(redis: Redis, state: BatchState, lines: list[Line]) -> None:
    kind = job_kind(state["endpoint"])
    deadline = state.stamp("expires_at") or time.time()
    tenant = state.fields.get("owner") or keys.ANONYMOUS_TENANT
    weight = float(state.fields.get("weight") or 1)
    pipe = redis.pipeline(transaction=False)
    for line in lines:
        if line.body is None:
            continue
        job = Job(
            request_id=f"{_PREFIXES[kind]}-{state.id.removeprefix('batch_')}-{line.number}",
            kind=kind,
            model=line.body.model,
            body=line.body,
            deadline=deadline,
            batch_id=state.id,
            batch_line=line.number,
            tenant=tenant,
        )
        stream = keys.batch_stream(job.model)
        # never refused: a batch waits for its turns however long its queue is
        pipe.eval(
            tenants.ENQUEUE, *tenants.enqueue_command(stream, tenant, weight, 0, job.to_fields())
        )
    await pipe.execute()


def _chunks(lines: list[Line], size: int) -> Iterator[list[Line]]:
    for start in range(0, len(lines), size):
        yield lines[start : start + size]


# --------------------------------------------------------------------------- finalize


async def finalize_batch(ctx: Ctx, batch_id: str) -> None:
    """Freeze the results of a batch that is done, expired or cancelled, and write its output
    and error files. Does nothing for a batch not ready yet."""
    store, settings, _ = _parts(ctx)
    state = await _state(store, batch_id)
    if state is None:
        return
    ending = await _freeze(store, state, settings)
    if ending is not None:
        final = await _state(store, batch_id)  # the last lines' tokens are charged too
        if final is not None:
            await throttle.charge(ctx["redis"], store, await _owner_key(ctx, final), final)
        await _write_outputs(ctx, batch_id, ending)


async def _freeze(store: BatchStore, state: BatchState, settings: Settings) -> str | None:
    """Stop recording results; the way the batch ends, or None when it is not ready."""
    if state.status in ("validating", "in_progress") and state.expired():
        moved = await store.transition(
            state.id, "finalizing", allowed=("validating", "in_progress"), ending="expired"
        )
        return "expired" if moved else None
    if state.status == "in_progress" and state.done >= state.count("total") > 0:
        moved = await store.transition(
            state.id, "finalizing", allowed=("in_progress",), ending="completed"
        )
        return "completed" if moved else None
    if state.status == "cancelling":
        if state.count("running") > 0 and not _grace_over(state, settings.batch_cancel_grace):
            return None  # finalized when its last running line is recorded, or by the sweep
        moved = await store.transition(
            state.id, "cancelling", allowed=("cancelling",), ending="cancelled", stamp=False
        )
        return "cancelled" if moved else None
    if state.status == "finalizing":
        return state["ending"] or "completed"
    return None


def _grace_over(state: BatchState, grace: float) -> bool:
    cancelling_at = state.stamp("cancelling_at") or 0.0
    return time.time() > cancelling_at + grace


async def _write_outputs(ctx: Ctx, batch_id: str, ending: str) -> None:
    store, settings, _ = _parts(ctx)
    state = await store.state(batch_id)
    custom_ids = await _custom_ids(store, state)
    recorded = await store.results(batch_id)
    good, bad = _split(custom_ids, recorded, ending)
    hex_id = batch_id.removeprefix("batch_")
    fields = {"total": str(max(state.count("total"), len(custom_ids)))}
    for name, suffix, lines in (
        ("output_file_id", "output", good),
        ("error_file_id", "error", bad),
    ):
        if lines:
            file_id = f"file-{hex_id}-{suffix}"
            filename = f"{batch_id}_{suffix}.jsonl"
            owner = state.fields.get("owner", "")
            await _put_output(store, settings, file_id, filename, lines, owner)
            fields[name] = file_id
    await store.update(batch_id, fields)
    source = "cancelling" if ending == "cancelled" else "finalizing"
    await store.transition(batch_id, ending, allowed=(source,))


def _split(
    custom_ids: dict[int, str | None], recorded: dict[int, Record], ending: str
) -> tuple[list[Record], list[Record]]:
    good, bad = [], []
    unrun = "batch_cancelled" if ending == "cancelled" else "batch_expired"
    for number in sorted(set(custom_ids) | set(recorded)):
        record = recorded.get(number)
        custom_id = custom_ids.get(number)
        if record is None:
            bad.append(results.unrun_line(custom_id, unrun))
        elif results.succeeded(record):
            good.append(results.output_line(custom_id, record))
        else:
            bad.append(results.output_line(custom_id, record))
    return good, bad


async def _custom_ids(store: BatchStore, state: BatchState) -> dict[int, str | None]:
    """Line number → custom_id of every non-blank input line (None where unreadable)."""
    try:
        content = await store.file_content(state["input_file_id"])
    except NotFound:
        return {}
    return await asyncio.to_thread(_read_custom_ids, content)


def _read_custom_ids(content: bytes) -> dict[int, str | None]:
    found: dict[int, str | None] = {}
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if raw.strip():
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                item = None
            value = item.get("custom_id") if isinstance(item, dict) else None
            found[number] = value if isinstance(value, str) else None
    return found


async def _put_output(
    store: BatchStore,
    settings: Settings,
    file_id: str,
    filename: str,
    lines: list[Record],
    owner: str,
) -> None:
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    now = int(time.time())
    meta = FileObject(
        id=file_id,
        bytes=len(content),
        created_at=now,
        expires_at=now + int(settings.batch_retention),
        filename=filename,
        purpose="batch_output",
    )
    await store.put_file(meta, content, owner)


# --------------------------------------------------------------------------- sweep


async def sweep(ctx: Ctx) -> None:
    """Push every active batch on to its next step (expiry included), and purge what is past
    retention."""
    store, settings, _ = _parts(ctx)
    now = time.time()
    for batch_id in await store.active():
        state = await _state(store, batch_id)
        step = _next_step(state, now) if state is not None else None
        if step is not None:
            await enqueue_step(ctx["redis"], step, batch_id)
    await _purge(store, now - settings.batch_retention)


def _next_step(state: BatchState, now: float) -> str | None:
    if state.status in ("cancelling", "finalizing"):
        return FINALIZE
    if state.expired(now):
        return FINALIZE
    if state.status == "validating":
        return VALIDATE
    if state.status != "in_progress":
        return None
    if state.done >= state.count("total"):
        return FINALIZE
    return FAN_OUT if state.count("fanned") < state.count("valid_last") else None


async def _purge(store: BatchStore, before: float) -> None:
    for file_id in await store.old_files(before):
        with contextlib.suppress(NotFound):
            await store.delete_file(file_id)
    for batch_id in await store.old_batches(before):
        state = await _state(store, batch_id)
        if state is None or state.status in ("completed", "failed", "expired", "cancelled"):
            await store.purge_batch(batch_id)


async def _state(store: BatchStore, batch_id: str) -> BatchState | None:
    try:
        return await store.state(batch_id)
    except NotFound:
        return None


# --------------------------------------------------------------------------- the arq worker


def _retrying(step: Any) -> Any:
    """Turn Redis being away into an arq retry a little later, instead of a failed job."""

    async def run(ctx: Ctx, *args: Any) -> None:
        try:
            await step(ctx, *args)
        except UNAVAILABLE as exc:
            log.warning("%s: redis unavailable (%s); retrying", step.__name__, exc)
            raise Retry(defer=min(2 * ctx.get("job_try", 1), 30)) from exc

    run.__name__ = run.__qualname__ = step.__name__
    return run


def create_worker(settings: Settings, config: Config) -> Worker:
    """The arq worker running the batch lifecycle: ``llmspool batch-worker``."""
    # Steps are short (none waits): a step cut off by a crash is picked up again once arq's
    # in-progress mark of it expires, at most this timeout (+10 s) later.
    timeout = 120
    functions = [
        func(_retrying(step), name=step.__name__, max_tries=20, timeout=timeout)
        for step in (validate_batch, fan_out_batch, finalize_batch)
    ]
    every = settings.batch_sweep_seconds
    sweeper = cron(
        _retrying(sweep),
        # arq names each run's job "<name>:<time>": under llmspool: like every other job id
        name=keys.BATCH_SWEEP_JOB,
        second=set(range(0, 60, every)),
        run_at_startup=True,
    )
    return Worker(
        functions=functions,
        cron_jobs=[sweeper],
        redis_settings=RedisSettings.from_dsn(settings.resolved_redis_url()),
        queue_name=keys.BATCH_JOBS_QUEUE,
        health_check_key=keys.BATCH_JOBS_HEALTH_CHECK,
        keep_result=0,
        job_timeout=timeout,
        poll_delay=0.1,
        max_jobs=8,
        ctx={"settings": settings, "config": config, "worker_id": uuid.uuid4().hex[:8]},
    )
