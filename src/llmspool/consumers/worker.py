"""The worker: serves one model with one backend, reading its stream through a consumer group.

Lifecycle (as uvicorn's): :meth:`Worker.serve` runs ``startup`` (load the model, join the
group, start the publisher and the cancel listener), ``main_loop`` (XREADGROUP as many jobs as
there are free slots, run each in a task) and ``shutdown`` (stop reading, let running jobs
finish for ``drain_timeout``, hand back the rest by leaving them unacknowledged). SIGTERM and
SIGINT start the shutdown.

A job is acknowledged only after its final frame is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import OrderedDict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llmspool.consumers.backends.base import Backend
from llmspool.consumers.publisher import ReplyPublisher, ReplyStream
from llmspool.shared import keys, registry
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import DeadlineExceeded, EngineError, LLMSpoolError
from llmspool.shared.logs import request_id
from llmspool.shared.messages import Job, JobKind, UnknownSchema, WireError, decode_fields
from llmspool.shared.metrics import MetricsServer, WorkerMetrics
from llmspool.shared.protocol import EmbeddingRequest, Usage
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.settings import Settings

log = logging.getLogger(__name__)

_WILDCARDS = ("0.0.0.0", "::", "")
_CANCEL_MEMORY = 10_000  # ids of cancelled requests remembered to skip them if still queued


def new_worker_id(model: str) -> str:
    return f"{model}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs one model's jobs until told to stop."""

    def __init__(
        self, settings: Settings, model: ModelConfig, backend: Backend, redis: Redis
    ) -> None:
        self.settings = settings
        self.model = model
        self.backend = backend
        self.redis = redis
        self.id = new_worker_id(model.name)
        self.capacity = backend.max_concurrency
        self.publisher = ReplyPublisher(redis, settings.coalesce_ms / 1000, self.id)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._slot_freed = asyncio.Event()
        self._exiting = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.jobs_done = 0
        self.metrics = WorkerMetrics(
            model.name,
            frames=lambda: self.publisher.frames_sent,
            tokens=lambda: self.publisher.tokens_sent,
            running=lambda: len(self.running),
            capacity=self.capacity,
        )
        self._metrics_server: MetricsServer | None = None
        self.info = registry.WorkerInfo(
            id=self.id,
            model=model.name,
            backend=model.backend,
            host=socket.gethostname(),
            pid=os.getpid(),
            capacity=self.capacity,
            started=time.time(),
        )

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        self._install_signal_handlers()
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        self._exiting.set()
        self._slot_freed.set()

    async def startup(self) -> None:
        await self.backend.start()
        await ensure_groups(self.redis, self.model.name)
        self._start_metrics_server()
        self.publisher.start()
        self._tasks.append(asyncio.create_task(self._listen_cancels(), name="cancels"))
        await registry.beat(self.redis, self.info)
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        log.info("worker %s serving %s (capacity %d)", self.id, self.model.name, self.capacity)

    async def main_loop(self) -> None:
        while not self._exiting.is_set():
            free = self.capacity - len(self.running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            for stream, entry_id, fields in await self._read(free):
                self._spawn(stream, entry_id, fields)

    async def shutdown(self) -> None:
        log.info("worker %s draining %d running jobs", self.id, len(self.running))
        pending = list(self.running.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
            for task in still:  # handed back: left unacknowledged, reclaimed by another worker
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.publisher.stop()
        with contextlib.suppress(*UNAVAILABLE):
            await registry.deregister(self.redis, self.id)
        await self.backend.stop()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)

    def _start_metrics_server(self) -> None:
        port = self.settings.worker_metrics_port
        if port is None:
            return
        self._metrics_server = MetricsServer.start(self.metrics.registry, self.settings.host, port)
        host = self.settings.host
        if host in _WILDCARDS:  # reachable from elsewhere: name the host, not the wildcard
            host = socket.gethostname()
        self.info.metrics = f"{host}:{self._metrics_server.port}"
        log.info("worker metrics on http://%s/metrics", self.info.metrics)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_exit)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(registry.HEARTBEAT_SECONDS)
            self.info.in_flight = len(self.running)
            self.info.state = "draining" if self._exiting.is_set() else "serving"
            try:
                await registry.beat(self.redis, self.info)
            except UNAVAILABLE as exc:
                log.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ reading

    async def _read(self, count: int) -> list[tuple[str, str, dict[str, str]]]:
        stream = keys.requests_stream(self.model.name)
        try:
            reply = await self.redis.xreadgroup(
                keys.GROUP, self.id, {stream: ">"}, count=count, block=self.settings.block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await ensure_groups(self.redis, self.model.name)
            return []
        except UNAVAILABLE as exc:
            log.warning("redis unavailable while reading jobs: %s", exc)
            await asyncio.sleep(0.5)
            return []
        return [
            (stream, _text(entry_id), decode_fields(fields))
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    def _spawn(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        request_id = fields.get("request_id", entry_id)
        task = asyncio.create_task(self._handle(stream, entry_id, fields), name=request_id)
        self.running[request_id] = task
        task.add_done_callback(lambda _: self._finished(request_id))

    def _finished(self, request_id: str) -> None:
        self.running.pop(request_id, None)
        self.jobs_done += 1
        self._slot_freed.set()

    # ------------------------------------------------------------------ running jobs

    async def _handle(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        try:
            job = Job.from_fields(fields)
        except UnknownSchema as exc:
            log.warning("job %s left for a newer worker: %s", entry_id, exc)
            return
        except Exception as exc:  # a malformed entry must not wedge the queue
            log.error("dropping malformed job %s: %s", entry_id, exc)
            await self._ack(stream, entry_id)
            return
        if await self._run(job):
            await self._ack(stream, entry_id)

    async def _run(self, job: Job) -> bool:
        """Run ``job``; True when it is settled and may be acknowledged."""
        if job.request_id in self._cancelled:
            self.metrics.settled("cancelled")
            return True
        request_id.set(job.request_id)
        reply = self.publisher.stream(job.request_id, job.attempt, time.time())
        try:
            await self._attempt(job, reply)
        except asyncio.CancelledError:
            if self._exiting.is_set() and job.request_id not in self._cancelled:
                raise  # shutting down: hand the job back unacknowledged
            self.metrics.settled("cancelled")
            return True
        self._observe(reply)
        return True

    async def _attempt(self, job: Job, reply: ReplyStream) -> None:
        """Run one attempt of ``job``; every failure ends as an error frame."""
        try:
            if job.expired():
                raise _deadline_error("its deadline passed while it was queued")
            async with asyncio.timeout_at(_loop_time_at(job.deadline)):
                await self._execute(job, reply)
        except TimeoutError:
            await reply.finish(
                error=WireError.of(_deadline_error("its deadline passed while running"))
            )
        except LLMSpoolError as exc:
            await reply.finish(error=WireError.of(exc))
        except Exception as exc:
            log.exception("job %s failed", job.request_id)
            await reply.finish(error=WireError.of(EngineError(f"engine error: {exc}")))

    def _observe(self, reply: ReplyStream) -> None:
        """Engine-side metrics of a settled attempt."""
        final = reply.final
        if final is None:
            return
        if final.error is not None:
            outcome = final.error.code or final.error.kind
        else:
            outcome = final.finish_reason or "stop"
        self.metrics.settled(outcome)
        log.debug("job settled: %s", outcome, extra={"outcome": outcome})
        self.metrics.job_time.observe(time.time() - reply.started_at)
        if reply.first_text_at is not None:
            self.metrics.first_token.observe(reply.first_text_at - reply.started_at)

    async def _execute(self, job: Job, reply: ReplyStream) -> None:
        if job.kind is JobKind.EMBEDDING:
            await self._embed(job, reply)
            return
        async for delta in self.backend.generate(job):
            if delta.text:
                reply.write(delta.text, delta.tokens)
            if delta.finish_reason is not None:
                await reply.finish(delta.finish_reason, delta.usage)
                return
        raise LLMSpoolError("the engine ended the generation without a finish reason")

    async def _embed(self, job: Job, reply: ReplyStream) -> None:
        if not isinstance(job.body, EmbeddingRequest):
            raise LLMSpoolError("embedding job without an embedding request")
        texts = job.body.texts()
        vectors = await self.backend.embed(texts)
        tokens = sum(len(text.split()) for text in texts)
        await reply.finish(
            embeddings=vectors, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    async def _ack(self, stream: str, entry_id: str) -> None:
        try:
            await self.redis.xack(stream, keys.GROUP, entry_id)
        except UNAVAILABLE as exc:  # stays pending; reclaimed and settled again later
            log.warning("could not acknowledge %s: %s", entry_id, exc)

    # ------------------------------------------------------------------ cancellation

    async def _listen_cancels(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.cancel(_text(message["data"]))
            except UNAVAILABLE as exc:
                log.warning("cancel listener lost redis: %s", exc)
                await asyncio.sleep(0.5)

    def cancel(self, request_id: str) -> None:
        """Abort ``request_id`` if it runs here, and skip it if it is still queued."""
        self._cancelled[request_id] = None
        if len(self._cancelled) > _CANCEL_MEMORY:
            self._cancelled.popitem(last=False)
        task = self.running.get(request_id)
        if task is not None:
            task.cancel()


async def ensure_groups(redis: Redis, model: str) -> None:
    """Create the consumer group on each of ``model``'s streams (from the start: jobs added
    before any worker existed are served too)."""
    for stream in keys.model_streams(model):
        try:
            await redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _deadline_error(why: str) -> LLMSpoolError:
    return DeadlineExceeded(f"The request was not served: {why}.")


def _loop_time_at(wall: float) -> float:
    return asyncio.get_running_loop().time() + (wall - time.time())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
