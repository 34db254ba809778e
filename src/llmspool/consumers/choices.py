"""Replies of several choices (``n`` > 1) and echoed prompts, for every backend alike.

The worker runs the ``n`` generations of one job concurrently, as ``n`` jobs of one choice
each (seed ``seed + i`` when the request gave a seed, so the choices differ but repeat), and
tags their text with the choice's index. A choice that ends while others run ends with a frame
of its own (``more``); the last one to end sends the final frame, with the usage summed as
OpenAI sums it: the prompt counted once, the completions added up. A backend that runs jobs one
at a time (llama.cpp) runs the choices one after another; one that batches (vLLM) runs them
together.
"""

from __future__ import annotations

import asyncio

from llmspool.consumers.backends.base import Backend
from llmspool.consumers.publisher import ReplySink
from llmspool.shared.errors import LLMSpoolError
from llmspool.shared.messages import Job
from llmspool.shared.protocol import CompletionRequest, FinishReason, Usage


def echoed(job: Job) -> str:
    """The prompt a completion request with ``echo`` gets back before its text ("" else)."""
    body = job.body
    return body.prompt_text() if isinstance(body, CompletionRequest) and body.echo else ""


def choice_job(job: Job, index: int) -> Job:
    """The job of choice ``index``: one choice, its own seed."""
    body = job.body
    seed = getattr(body, "seed", None)
    update: dict[str, object] = {"n": None}
    if seed is not None:
        update["seed"] = seed + index
    return job.model_copy(update={"body": body.model_copy(update=update)})


class _Tally:
    """The choices still running, and the usage of those that ended."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.usage = Usage()

    def add(self, usage: Usage | None) -> Usage:
        if usage is not None:
            self.usage = Usage(
                prompt_tokens=max(self.usage.prompt_tokens, usage.prompt_tokens),
                completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
            )
            self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens
        self.left -= 1
        return self.usage


async def run(backend: Backend, job: Job, reply: ReplySink, n: int) -> None:
    """Run ``n`` choices of ``job`` concurrently into ``reply``; the first failure cancels
    the others and is raised."""
    tally = _Tally(n)
    try:
        async with asyncio.TaskGroup() as group:
            for index in range(n):
                group.create_task(_choice(backend, choice_job(job, index), reply, index, tally))
    except BaseExceptionGroup as failed:  # the worker settles one error, as for one choice
        raise failed.exceptions[0] from None


async def _choice(backend: Backend, job: Job, reply: ReplySink, index: int, tally: _Tally) -> None:
    echo = echoed(job)
    if echo:
        reply.write(echo, 0, index)
    async for delta in backend.generate(job):
        if delta.text or delta.logprobs:
            reply.write(delta.text, delta.tokens, index, delta.logprobs)
        if delta.finish_reason is not None:
            await _end(reply, index, delta.finish_reason, tally.add(delta.usage), tally.left)
            return
    raise LLMSpoolError("the engine ended the generation without a finish reason")


async def _end(reply: ReplySink, index: int, reason: FinishReason, usage: Usage, left: int) -> None:
    if left:
        reply.end_choice(index, reason)
    else:
        await reply.finish(reason, usage, index=index)
