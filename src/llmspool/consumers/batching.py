"""A worker's side of batch lines: run a line only when its claim allows, record it once.

A batch line is a job like any other on the model's batch stream, but its reply is collected
in memory instead of published, and its result is written into the batch with one script
(:meth:`BatchStore.record`) before the entry is acknowledged. A crash between the two leaves
the entry pending; whoever gets it next finds the result recorded and only acknowledges it.
The worker that records a batch's last result queues the batch's finalize step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from llmspool.batch import results
from llmspool.batch.models import Record
from llmspool.batch.queue import FINALIZE, enqueue_step
from llmspool.batch.store import BatchStore
from llmspool.consumers.publisher import ReplySink
from llmspool.shared.errors import EngineError, LLMSpoolError
from llmspool.shared.messages import Job, ReplyFrame, WireError
from llmspool.shared.protocol import ChatCompletionTokenLogprob, FinishReason, ToolCallDelta, Usage
from llmspool.shared.redis import UNAVAILABLE

log = logging.getLogger(__name__)

Execute = Callable[[Job, ReplySink], Awaitable[None]]


class CollectedReply:
    """A reply kept in memory: its frames, the final one last once the engine finishes."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.frames: list[ReplyFrame] = []
        self.final: ReplyFrame | None = None

    def write(
        self,
        text: str,
        tokens: int,
        index: int = 0,
        logprobs: list[ChatCompletionTokenLogprob] | None = None,
    ) -> None:
        self.frames.append(self._frame(text=text, index=index, logprobs=logprobs))

    def write_tool_calls(self, calls: list[ToolCallDelta], tokens: int) -> None:
        self.frames.append(self._frame(tool_calls=list(calls)))

    def end_choice(self, index: int, finish_reason: FinishReason) -> None:
        self.frames.append(self._frame(finish_reason=finish_reason, index=index, more=True))

    async def finish(
        self,
        finish_reason: FinishReason | None = None,
        usage: Usage | None = None,
        error: WireError | None = None,
        embeddings: list[list[float]] | None = None,
        token_ids: list[int] | None = None,
        index: int = 0,
    ) -> None:
        self.final = self._frame(
            finish_reason=finish_reason,
            usage=usage,
            error=error,
            embeddings=embeddings,
            token_ids=token_ids,
            index=index,
        )
        self.frames.append(self.final)

    def _frame(self, **fields: object) -> ReplyFrame:
        return ReplyFrame.model_validate({"request_id": self.request_id, "seq": 0, **fields})


class BatchLines:
    """Runs batch lines for one worker."""

    def __init__(self, redis: Redis, execute: Execute) -> None:
        self.redis = redis
        self.store = BatchStore(redis)
        self._execute = execute

    async def run(self, job: Job, entry_id: str) -> bool:
        """Settle one line; True when its stream entry may be acknowledged."""
        if job.batch_id is None or job.batch_line is None:
            return True
        try:
            verdict = await self.store.claim(job.batch_id, job.batch_line, entry_id)
            if verdict != "run":  # recorded already, a duplicate, or the batch stopped
                return True
            attempt = await self._attempt(job)
            if attempt is None:  # the completion window ended: reported as batch_expired
                return True
            record, ok, tokens = attempt
            answer = await self.store.record(
                job.batch_id, job.batch_line, record, ok=ok, tokens=tokens
            )
            if answer in (2, 3):  # every line done, or a cancelling batch's last running one
                await enqueue_step(self.redis, FINALIZE, job.batch_id)
        except UNAVAILABLE as exc:  # left pending: reclaimed and settled again later
            log.warning("batch line %s not settled, redis unavailable: %s", job.request_id, exc)
            return False
        return True

    async def _attempt(self, job: Job) -> tuple[Record, bool, tuple[int, int]] | None:
        """Run the line: its record, whether it succeeded, and its (prompt, output) tokens;
        None when the batch's completion window (the job's deadline) ended first."""
        reply = CollectedReply(job.request_id)
        try:
            async with asyncio.timeout_at(_loop_time_at(job.deadline)):
                await self._execute(job, reply)
        except TimeoutError:
            return None
        except LLMSpoolError as exc:
            return results.failure_record(job, exc), False, (0, 0)
        except Exception as exc:
            log.exception("batch line %s failed", job.request_id)
            error: LLMSpoolError = EngineError(f"engine error: {exc}")
            return results.failure_record(job, error), False, (0, 0)
        final = reply.final
        if final is None:
            error = EngineError("the engine ended the generation without a finish reason")
            return results.failure_record(job, error), False, (0, 0)
        if final.error is not None:
            return results.failure_record(job, final.error.to_exception()), False, (0, 0)
        return results.success_record(job, reply.frames, final), True, results.tokens(final)


def _loop_time_at(wall: float) -> float:
    return asyncio.get_running_loop().time() + (wall - time.time())
