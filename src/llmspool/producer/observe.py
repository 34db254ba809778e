"""Watching each request as the client sees it: metrics and the request-log record.

The API creates one :class:`RequestTrace` per request it enqueues. The reply calls
:meth:`RequestTrace.frame` for every frame it accepts and :meth:`RequestTrace.finish` once, when it
closes; the trace then settles the metrics and writes the request's log record. The per-frame work
is a few additions and one histogram observation per token (see docs/observability.md).
"""

from __future__ import annotations

import logging
import time

from llmspool.shared.errors import LLMSpoolError
from llmspool.shared.messages import Job, ReplyFrame
from llmspool.shared.metrics import ApiMetrics, ModelMetrics, observe_many
from llmspool.shared.requestlog import RequestLog, RequestRecord, request_parts

log = logging.getLogger(__name__)


class Observer:
    """The API process' metrics and request log; hands out one trace per request."""

    def __init__(self, metrics: ApiMetrics, request_log: RequestLog) -> None:
        self.metrics = metrics
        self.request_log = request_log

    def trace(self, job: Job, backend: str) -> RequestTrace:
        """Start watching ``job`` (call just before it is enqueued)."""
        return RequestTrace(job, backend, self.metrics.model(job.model), self.request_log)


class RequestTrace:
    """Timings, token counts and the outcome of one request."""

    def __init__(
        self, job: Job, backend: str, metrics: ModelMetrics, request_log: RequestLog
    ) -> None:
        self.job = job
        self.backend = backend
        self._metrics = metrics
        self._log = request_log
        self._start = time.perf_counter()
        self._last: float | None = None
        self._keep_text = request_log.keeps_output
        self.ttft: float | None = None
        self.queue_time: float | None = None
        self.worker: str | None = None
        self.attempt = 0
        self.parts: list[str] = []
        self.final: ReplyFrame | None = None
        self.error: LLMSpoolError | None = None
        self._finished = False
        metrics.waiting.inc()

    def frame(self, frame: ReplyFrame) -> None:
        """One accepted frame of the reply (the hot path: keep it small)."""
        now = time.perf_counter()
        if self._last is None:
            self._metrics.waiting.dec()
            self._metrics.running.inc()
        if frame.attempt != self.attempt:
            self._new_attempt(frame)
        self._metrics.frames_relayed.inc()
        if frame.tokens:
            self._tokens(frame.tokens, now)
        if self._keep_text and frame.text:
            self.parts.append(frame.text)
        if frame.started_at is not None and self.queue_time is None:
            self.queue_time = max(frame.started_at - self.job.enqueued_at, 0.0)
        self.worker = frame.worker or self.worker
        self._last = now
        if frame.final:
            self.final = frame

    def _tokens(self, tokens: int, now: float) -> None:
        self._metrics.tokens_relayed.inc(tokens)
        if self.ttft is None:
            self.ttft = now - self._start
            self._metrics.ttft.observe(self.ttft)
            return
        gap = (now - (self._last or now)) / tokens
        observe_many(self._metrics.itl, gap, tokens)

    def _new_attempt(self, frame: ReplyFrame) -> None:
        self.attempt = frame.attempt
        self.parts = []
        self.queue_time = None

    def fail(self, exc: LLMSpoolError) -> None:
        """The request ends in ``exc`` (raised by the reply, or refused before enqueueing)."""
        self.error = self.error or exc

    def finish(self) -> None:
        """Settle metrics and hand the log record to the writer; idempotent. Synchronous, so a
        cancelled request (client gone mid-stream) cannot skip it."""
        if self._finished:
            return
        self._finished = True
        total = time.perf_counter() - self._start
        if self._last is None:
            self._metrics.waiting.dec()
        else:
            self._metrics.running.dec()
        outcome = self._settle(total)
        log.debug(
            "request finished: %s in %.3fs",
            outcome,
            total,
            extra={"model": self.job.model, "worker": self.worker, "outcome": outcome},
        )
        self._log.submit(self._record(outcome, total))

    def _settle(self, total: float) -> str:
        """Update the outcome metrics; returns the outcome (finish reason or error code)."""
        final = self.final
        if self.error is None and final is not None and final.error is not None:
            self.error = final.error.to_exception()
        if self.error is not None:
            code = self.error.code or self.error.error_type
            self._metrics.failed(code)
            return code
        if final is None:
            self._metrics.succeeded("abort")
            return "abort"
        reason = final.finish_reason or "stop"  # an embedding has none
        self._metrics.succeeded(reason)
        self._metrics.e2e.observe(total)
        if self.queue_time is not None:
            self._metrics.queue_time.observe(self.queue_time)
        if final.usage is not None:
            self._tokens_used(final.usage.prompt_tokens, final.usage.completion_tokens)
        return reason

    def _tokens_used(self, prompt: int, generated: int) -> None:
        self._metrics.prompt_tokens.inc(prompt)
        self._metrics.generation_tokens.inc(generated)
        self._metrics.prompt_tokens_per_request.observe(prompt)
        self._metrics.generation_tokens_per_request.observe(generated)

    def _record(self, outcome: str, total: float) -> RequestRecord:
        usage = self.final.usage if self.final is not None else None
        params, prompt = request_parts(self.job.body)
        return RequestRecord(
            request_id=self.job.request_id,
            time=self.job.enqueued_at,
            model=self.job.model,
            kind=self.job.kind.value,
            backend=self.backend,
            worker=self.worker,
            attempt=self.attempt,
            params=params,
            prompt=prompt,
            output="".join(self.parts) if self.final is not None else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            queue_time=self.queue_time,
            ttft=self.ttft,
            total_time=total,
            outcome=outcome,
            error=self.error.message if self.error is not None else None,
        )
