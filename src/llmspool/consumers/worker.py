"""The worker: serves one model with one backend, reading its stream through a consumer group.

Lifecycle (as uvicorn's): :meth:`Worker.serve` runs ``startup`` (load the model, join the
group, start the publisher, the cancel listener and the upkeep task), ``main_loop`` (take over
jobs whose worker died, else XREADGROUP as many jobs as there are free slots; run each in a
task) and ``shutdown`` (stop reading, let running jobs finish for ``drain_timeout``, hand back
the rest). SIGTERM and SIGINT start the shutdown.

Interactive jobs come first: the batch stream is read only when the requests stream has
nothing waiting, and batch lines never take the last ``batch_reserve`` slots; a batch line is
acknowledged once its result is recorded (:mod:`llmspool.consumers.batching`).

A job of ``n`` choices runs ``n`` generations (:mod:`llmspool.consumers.choices`). A job is
acknowledged only after its final frame is published. An error the request caused (an
``LLMSpoolError``, such as a prompt over the context) is its reply, at once; a job whose
engine raised anything else is handed back for another attempt; after ``max_attempts`` it goes
to the dead stream (see :mod:`llmspool.consumers.delivery` for leases, attempts and trimming).
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
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from llmspool.consumers import choices
from llmspool.consumers.backends.base import Backend, tokenization_of
from llmspool.consumers.batching import BatchLines
from llmspool.consumers.delivery import Deliveries, Entry
from llmspool.consumers.publisher import ReplyPublisher, ReplySink, ReplyStream
from llmspool.shared import controlstate, keys
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import DeadlineExceeded, JobFailed, LLMSpoolError, RegistryUnavailable
from llmspool.shared.logs import request_id
from llmspool.shared.messages import Job, JobKind, UnknownSchema, WireError
from llmspool.shared.metrics import MetricsServer, WorkerMetrics
from llmspool.shared.protocol import EmbeddingRequest, Usage
from llmspool.shared.redis import UNAVAILABLE, is_cluster
from llmspool.shared.registry import Registry, WorkerInfo, open_registry
from llmspool.shared.settings import Settings
from llmspool.shared.shardpubsub import ShardSubscriber
from llmspool.shared.streams import ensure_groups
from llmspool.shared.tokens import DetokenizeRequest

log = logging.getLogger(__name__)

_WILDCARDS = ("0.0.0.0", "::", "")
_UPKEEP_MAX = 1.0  # seconds
#: While batch lines fill their slots, a read that waits only for interactive work returns this
#: often, so a batch slot that frees up is refilled soon.
_BATCH_POLL_MS = 20
#: A consumer with nothing pending that has not been given a job for this long is deleted from
#: the group: mostly workers that are gone (a live one comes back with its next job).
_CONSUMER_IDLE = 600.0
_CONSUMER_CLEANUP_EVERY = 60.0
_CANCEL_MEMORY = 10_000  # ids of cancelled requests remembered to skip them if still queued
_TASK_STOP_TIMEOUT = 2.0  # seconds background tasks get to end once cancelled


def new_worker_id(model: str) -> str:
    return f"{model}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs one model's jobs until told to stop."""

    def __init__(
        self,
        settings: Settings,
        model: ModelConfig,
        backend: Backend,
        redis: Redis,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.backend = backend
        self.redis = redis
        self.registry = registry or open_registry(settings, redis)
        self.id = new_worker_id(model.name)
        self.capacity = backend.max_concurrency
        self.publisher = ReplyPublisher(
            redis, settings.coalesce_ms / 1000, self.id, settings.replylog_ttl
        )
        self.deliveries = Deliveries(redis, model.name, self.id, settings.lease)
        self.running: dict[str, tuple[Entry, asyncio.Task[None]]] = {}
        self.batch = BatchLines(redis, self._execute)
        self.batch_slots = self.capacity - min(settings.batch_reserve, self.capacity - 1)
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._lost: set[str] = set()
        self._slot_freed = asyncio.Event()
        self._exiting = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # leases kept and takeovers looked for every lease/4, the streams trimmed as often
        self._upkeep_every = min(settings.lease / 4, _UPKEEP_MAX)
        self._next_reclaim = 0.0
        # a blocked read must end well before a command times out
        self._block_ms = max(1, min(settings.block_ms, int(settings.redis_timeout * 500)))
        self.metrics = WorkerMetrics(
            model.name,
            frames=lambda: self.publisher.frames_sent,
            tokens=lambda: self.publisher.tokens_sent,
            running=lambda: len(self.running),
            capacity=self.capacity,
            engine_running=self.engine_running,
            engine_tokens=self.engine_tokens,
        )
        self._metrics_server: MetricsServer | None = None
        self.drain_timeout = settings.drain_timeout
        self.info = WorkerInfo(
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
        self.info.max_model_len = getattr(self.backend, "max_model_len", None) or 0
        await ensure_groups(self.redis, self.model.name)
        self._start_metrics_server()
        self.publisher.start()
        self._tasks.append(asyncio.create_task(self._listen_cancels(), name="cancels"))
        await self._register()
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        self._tasks.append(asyncio.create_task(self._upkeep(), name="upkeep"))
        log.info("worker %s serving %s (capacity %d)", self.id, self.model.name, self.capacity)

    async def main_loop(self) -> None:
        while not self._exiting.is_set():
            free = self.capacity - len(self.running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            for entry in await self._next_entries(free):
                self._spawn(entry)

    async def shutdown(self) -> None:
        log.info("worker %s draining %d running jobs", self.id, len(self.running))
        pending = [task for _, task in self.running.values()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.drain_timeout)
            for task in still:  # handed back (see _interrupted): another worker takes it now
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        # Bounded: a background task stuck in a Redis call must not keep the process alive.
        await asyncio.wait(self._tasks, timeout=_TASK_STOP_TIMEOUT)
        await self.publisher.stop()
        with contextlib.suppress(*UNAVAILABLE, RegistryUnavailable):
            await self.registry.deregister(self.id)
        with contextlib.suppress(*UNAVAILABLE, RegistryUnavailable, TimeoutError):
            await self.registry.close()
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

    async def _register(self) -> None:
        """Join the registry; an unreachable external registry (etcd) does not stop the worker
        from serving: its heartbeat registers it once the registry is back."""
        try:
            await self.registry.register(self.info)
        except RegistryUnavailable as exc:
            log.warning("not registered yet: %s", exc.message)

    def engine_running(self) -> int:
        """Requests the engine runs, where the backend says (vllm); else this worker's jobs."""
        running: int = getattr(self.backend, "engine_running", len(self.running))
        return running

    def engine_tokens(self) -> int:
        """Tokens the engine generated, where the backend counts them (vllm, fake); else 0."""
        tokens: int = getattr(self.backend, "tokens_generated", 0)
        return tokens

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.registry.heartbeat_interval)
            self.info.in_flight = len(self.running)
            self.info.state = "draining" if self._exiting.is_set() else "serving"
            self.info.engine_tokens = self.engine_tokens()
            self.info.engine_running = self.engine_running()
            try:
                await self.registry.heartbeat(self.info)
            except (RegistryUnavailable, *UNAVAILABLE) as exc:  # keep serving all the same
                log.warning("heartbeat failed: %s", exc)
            try:
                await self._check_drain()
            except UNAVAILABLE as exc:
                log.warning("drain check failed: %s", exc)

    async def _upkeep(self) -> None:
        """Keep the leases of running jobs, stop those taken over, trim the streams, and now
        and then delete the consumers of workers that are gone."""
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time() + _CONSUMER_CLEANUP_EVERY
        while True:
            await asyncio.sleep(self._upkeep_every)
            try:
                await self._keep_leases()
                await self.deliveries.trim()
                if loop.time() >= next_cleanup:
                    next_cleanup = loop.time() + _CONSUMER_CLEANUP_EVERY
                    gone = await self.deliveries.forget_gone(int(_CONSUMER_IDLE * 1000))
                    if gone:
                        log.info("deleted %d consumers of workers that are gone", gone)
            except (ResponseError, *UNAVAILABLE) as exc:
                log.warning("upkeep failed: %s", exc)

    async def _keep_leases(self) -> None:
        held = {(e.stream, e.id): rid for rid, (e, _) in self.running.items()}
        for stream_entry in await self.deliveries.touch(list(held)):
            request_id = held[stream_entry]
            log.warning("job %s was taken over by another worker; stopping it", request_id)
            self._lost.add(request_id)
            if request_id in self.running:
                self.running[request_id][1].cancel()

    async def _check_drain(self) -> None:
        """Act on an operator's ``llmspool workers drain|stop`` (see shared/controlstate.py)."""
        mode = await controlstate.drain_requested(self.redis, self.id)
        if mode is None or self._exiting.is_set():
            return
        log.info("worker %s asked to %s", self.id, mode)
        if mode == "stop":
            self.drain_timeout = 0.0
        self.request_exit()

    # ------------------------------------------------------------------ reading

    async def _next_entries(self, free: int) -> list[Entry]:
        """Jobs whose worker died first (every lease/4), else new ones."""
        try:
            now = asyncio.get_running_loop().time()
            if now >= self._next_reclaim:
                self._next_reclaim = now + self._upkeep_every
                reclaimed = await self.deliveries.reclaim(free)
                if reclaimed:
                    return reclaimed
            return await self._read_new(free)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await ensure_groups(self.redis, self.model.name)
        except UNAVAILABLE as exc:
            log.warning("redis unavailable while reading jobs: %s", exc)
            await asyncio.sleep(0.5)
        return []

    async def _read_new(self, free: int) -> list[Entry]:
        """Interactive jobs first; batch lines only into free batch slots; with neither, wait
        for a job to be enqueued (while batch lines fill their slots, only for interactive
        work, and briefly, so a batch slot that frees up is refilled soon)."""
        entries = await self.deliveries.read(free)
        if entries:
            return entries
        requests, batch = keys.model_streams(self.model.name)
        batch_free = self.batch_slots - self._batch_running()
        if batch_free > 0:
            entries = await self.deliveries.read(min(free, batch_free), batch)
            if entries:
                return entries
            await self.deliveries.wait([requests, batch], self._block_ms)
        else:
            await self.deliveries.wait([requests], _BATCH_POLL_MS)
        return []

    def _batch_running(self) -> int:
        return sum(1 for entry, _ in self.running.values() if _is_batch(entry.stream))

    def _spawn(self, entry: Entry) -> None:
        # a batch line is keyed by its entry: a line queued twice has one request id
        request_id = entry.id if _is_batch(entry.stream) else entry.request_id
        task = asyncio.create_task(self._handle(entry), name=request_id)
        self.running[request_id] = (entry, task)
        task.add_done_callback(lambda _: self._finished(request_id))

    def _finished(self, request_id: str) -> None:
        self.running.pop(request_id, None)
        self._lost.discard(request_id)
        self._slot_freed.set()

    # ------------------------------------------------------------------ settling jobs

    async def _handle(self, entry: Entry) -> None:
        try:
            await self._settle(entry)
        except asyncio.CancelledError:
            with contextlib.suppress(*UNAVAILABLE):
                await self._interrupted(entry)
        except UNAVAILABLE as exc:  # stays pending: reclaimed and settled once Redis is back
            log.warning("redis unavailable settling %s: %s", entry.request_id, exc)

    async def _settle(self, entry: Entry) -> None:
        try:
            job = Job.from_fields(entry.fields, attempt=entry.delivery)
        except UnknownSchema as exc:
            await self._not_mine(entry, str(exc))
            return
        except Exception as exc:  # a malformed entry must not wedge the queue
            await self.deliveries.bury(entry, f"malformed job entry: {exc}")
            return
        if job.batch_id is not None:
            if await self.batch.run(job, entry.id):
                await self.deliveries.ack(entry)
            return
        if job.request_id in self._cancelled:
            self.metrics.settled("cancelled")
            await self.deliveries.ack(entry)
        elif entry.attempts > self.model.max_attempts:
            await self._give_up(entry, job, await self.deliveries.last_error(entry))
        else:
            await self._attempt(entry, job)

    async def _attempt(self, entry: Entry, job: Job) -> None:
        request_id.set(job.request_id)
        reply = self.publisher.stream(job.request_id, job.attempt, job.deadline)
        failure = await self._run(job, reply)
        if failure is None:
            self._observe(reply)
            await self.deliveries.ack(entry)
        elif entry.attempts >= self.model.max_attempts:
            await self._give_up(entry, job, failure, reply)
            self._observe(reply)
        else:
            log.warning("job %s failed (attempt %d): %s", job.request_id, entry.attempts, failure)
            self.metrics.settled("retried")
            await self.deliveries.note_error(entry, failure)
            await self.deliveries.hand_back(entry, counts=True)

    async def _interrupted(self, entry: Entry) -> None:
        """The job's task was cancelled: by its client, by a takeover, or by shutdown."""
        request_id = entry.request_id
        if request_id in self._cancelled:
            self.metrics.settled("cancelled")
            await self.deliveries.ack(entry)
        elif request_id not in self._lost:
            log.info("handing back %s", request_id)
            await self.deliveries.hand_back(entry, counts=False)

    async def _give_up(
        self, entry: Entry, job: Job, error: str | None, reply: ReplyStream | None = None
    ) -> None:
        error = error or (
            f"its worker stopped (killed, or stalled past the {self.settings.lease:g} s lease) "
            "while running it"
        )
        failed = JobFailed(
            f"The request failed {self.model.max_attempts} times and was moved to the dead "
            f"stream; last error: {error}"
        )
        reply = reply or self.publisher.stream(job.request_id, job.attempt, job.deadline)
        await reply.finish(error=WireError.of(failed))
        await self.deliveries.bury(entry, error)

    async def _not_mine(self, entry: Entry, why: str) -> None:
        """A job of a schema this worker cannot read: hand it back unrun for a newer worker,
        without counting an attempt; once its deadline passed, settle it as expired."""
        deadline = _float(entry.fields.get("deadline"))
        if deadline is None or time.time() <= deadline:
            log.warning("job %s handed back for a newer worker: %s", entry.request_id, why)
            await self.deliveries.hand_back(entry, counts=False)
            return
        expired = WireError.of(_deadline_error("no worker that reads its schema took it in time"))
        await self.publisher.stream(entry.request_id, entry.delivery, deadline).finish(
            error=expired
        )
        await self.deliveries.ack(entry)

    async def _run(self, job: Job, reply: ReplyStream) -> str | None:
        """Run ``job``; None when it is settled, else why it failed (worth another attempt)."""
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
        except UNAVAILABLE:
            raise
        except Exception as exc:
            log.exception("job %s failed", job.request_id)
            return f"engine error: {type(exc).__name__}: {exc}"
        return None

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

    async def _execute(self, job: Job, reply: ReplySink) -> None:
        if job.kind is JobKind.EMBEDDING:
            await self._embed(job, reply)
            return
        if job.kind is JobKind.TOKENIZE:
            await reply.finish(token_ids=await self.backend.tokenize(tokenization_of(job)))
            return
        if job.kind is JobKind.DETOKENIZE:
            await self._detokenize(job, reply)
            return
        n = getattr(job.body, "n", None) or 1
        if n > 1:
            await choices.run(self.backend, job, reply, n)
            return
        echo = choices.echoed(job)
        if echo:
            reply.write(echo, 0)
        async for delta in self.backend.generate(job):
            if delta.text or delta.logprobs:
                reply.write(delta.text, delta.tokens, 0, delta.logprobs)
            if delta.tool_calls:
                reply.write_tool_calls(delta.tool_calls, 0 if delta.text else delta.tokens)
            if delta.finish_reason is not None:
                await reply.finish(delta.finish_reason, delta.usage)
                return
        raise LLMSpoolError("the engine ended the generation without a finish reason")

    async def _detokenize(self, job: Job, reply: ReplySink) -> None:
        if not isinstance(job.body, DetokenizeRequest):
            raise LLMSpoolError("detokenize job without a detokenize request")
        text = await self.backend.detokenize(job.body.tokens)
        reply.write(text, 0)
        await reply.finish("stop")

    async def _embed(self, job: Job, reply: ReplySink) -> None:
        if not isinstance(job.body, EmbeddingRequest):
            raise LLMSpoolError("embedding job without an embedding request")
        texts = job.body.texts()
        vectors = await self.backend.embed(texts)
        tokens = sum(len(text.split()) for text in texts)
        await reply.finish(
            embeddings=vectors, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    # ------------------------------------------------------------------ cancellation

    async def _listen_cancels(self) -> None:
        if is_cluster(self.redis):
            await self._listen_cancels_sharded()
            return
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.cancel_channel(self.model.name))
                    while True:
                        # a bounded wait: an idle subscription must not read as a timeout
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message["type"] == "message":
                            self.cancel(_text(message["data"]))
            except UNAVAILABLE as exc:
                log.warning("cancel listener lost redis: %s", exc)
                await asyncio.sleep(0.5)

    async def _listen_cancels_sharded(self) -> None:
        """On a cluster: SSUBSCRIBE on the cancel channel's shard (it reconnects by itself)."""

        def handle(kind: str, _: bytes, payload: Any) -> None:
            if kind == "message":
                self.cancel(_text(payload))

        shards = ShardSubscriber(cast(RedisCluster, self.redis), handle)
        try:
            while True:
                try:
                    await shards.subscribe(keys.cancel_channel(self.model.name))
                    await asyncio.Event().wait()
                except UNAVAILABLE as exc:
                    log.warning("cancel listener lost redis: %s", exc)
                    await asyncio.sleep(0.5)
        finally:
            await shards.close()

    def cancel(self, request_id: str) -> None:
        """Abort ``request_id`` if it runs here, and skip it if it is still queued."""
        self._cancelled[request_id] = None
        if len(self._cancelled) > _CANCEL_MEMORY:
            self._cancelled.popitem(last=False)
        held = self.running.get(request_id)
        if held is not None:
            held[1].cancel()


def _deadline_error(why: str) -> LLMSpoolError:
    return DeadlineExceeded(f"The request was not served: {why}.")


def _loop_time_at(wall: float) -> float:
    return asyncio.get_running_loop().time() + (wall - time.time())


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_batch(stream: str) -> bool:
    return stream.endswith(":batch")
