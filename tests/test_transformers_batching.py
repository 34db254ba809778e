"""The transformers backend's batched decode loop, on the tiny random Llama.

The loop's step hook (``BatchDecoder.on_step``) sees the request ids of every step's batch; a
:class:`Gate` records them and can hold the decode thread at a step, so the tests arrange who is
batched with whom without timing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from llmspool.consumers.backends import create_backend
from llmspool.consumers.backends.base import Delta
from llmspool.consumers.backends.decoder import BatchDecoder, Sequence
from llmspool.consumers.backends.transformers import TransformersBackend
from llmspool.shared.config import ModelConfig
from llmspool.shared.messages import Job
from tests.engines import SPECS
from tests.test_backend_contract import completion_job, run

pytestmark = [pytest.mark.torch, pytest.mark.asyncio(loop_scope="module")]

TOKENS = 12
PROMPTS = ["hello", "the quick brown fox jumps over", "queues hum", "a model deployment layer"]


def _model(tiny_llama: Path, **options: Any) -> ModelConfig:
    return ModelConfig(
        name="contract",
        backend="transformers",
        max_concurrency=8,
        options={"model": str(tiny_llama), **options},
    )


async def _started(config: ModelConfig) -> TransformersBackend:
    missing = SPECS["transformers"].missing()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    backend = create_backend(config)
    assert isinstance(backend, TransformersBackend)
    await backend.start()
    return backend


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(tiny_llama: Path) -> AsyncIterator[TransformersBackend]:
    started = await _started(_model(tiny_llama))
    yield started
    await started.stop()


@pytest.fixture
def decoder(backend: TransformersBackend) -> Iterator[BatchDecoder]:
    assert backend.decoder is not None, "batching is on by default"
    yield backend.decoder
    backend.decoder.on_step = None


@pytest.fixture
def inbox(decoder: BatchDecoder, monkeypatch: pytest.MonkeyPatch) -> Inbox:
    counted = Inbox(decoder)
    monkeypatch.setattr(decoder, "submit", counted.submit)
    return counted


class Gate:
    """A step hook: records each step's batch; holds the decode thread at a step until opened."""

    def __init__(self, hold: Callable[[tuple[str, ...]], bool]) -> None:
        self.hold = hold
        self.steps: list[tuple[str, ...]] = []
        self.opened = threading.Event()
        self.held = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def __call__(self, ids: tuple[str, ...]) -> None:
        self.steps.append(ids)
        if not self.opened.is_set() and self.hold(ids):
            self._loop.call_soon_threadsafe(self.held.set)
            self.opened.wait(60)

    def open(self) -> None:
        self.opened.set()


class Inbox:
    """Counts the decoder's submissions (made on the event loop), to await a number of them."""

    def __init__(self, decoder: BatchDecoder) -> None:
        self.count = 0
        self._wanted = 0
        self._reached = asyncio.Event()
        self._submit = decoder.submit

    def submit(self, sequence: Sequence) -> None:
        self._submit(sequence)
        self.count += 1
        if self.count >= self._wanted:
            self._reached.set()

    async def reached(self, count: int) -> None:
        self._wanted = count
        if self.count < count:
            self._reached.clear()
            await asyncio.wait_for(self._reached.wait(), 60)


async def batched(
    backend: TransformersBackend, inbox: Inbox, jobs: list[Job]
) -> list[tuple[str, Delta]]:
    """Run ``jobs`` so that all of them are in the batch together from the second step on."""
    decoder = backend.decoder
    assert decoder is not None
    gate = Gate(lambda ids: True)  # hold the first step until every job waits in the inbox
    decoder.on_step = gate
    wanted = inbox.count + len(jobs)
    tasks = [asyncio.create_task(run(backend, job)) for job in jobs]
    await asyncio.wait_for(gate.held.wait(), 60)
    await inbox.reached(wanted)
    gate.open()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert any(len(ids) == len(jobs) for ids in gate.steps), gate.steps
    return results


# --------------------------------------------------------------------------- the tests


async def test_concurrent_jobs_share_decode_steps(
    backend: TransformersBackend, decoder: BatchDecoder, inbox: Inbox
) -> None:
    jobs = [completion_job(p, max_tokens=TOKENS, temperature=0) for p in PROMPTS]
    steps = decoder.steps
    results = await batched(backend, inbox, jobs)
    for _, final in results:
        assert final.usage is not None and final.usage.completion_tokens == TOKENS
    # Alone, each job would take TOKENS - 1 decode steps after its prefill.
    assert decoder.steps - steps < 2 * TOKENS < len(jobs) * (TOKENS - 1)


async def test_a_cancelled_sequence_leaves_the_batch_while_others_continue(
    backend: TransformersBackend, decoder: BatchDecoder
) -> None:
    leaving = completion_job(PROMPTS[0], max_tokens=400, temperature=0)
    staying = completion_job(PROMPTS[1], max_tokens=3 * TOKENS, temperature=0)
    both = {leaving.request_id, staying.request_id}
    gate = Gate(lambda ids: set(ids) == both)  # hold the first step that batches both
    decoder.on_step = gate
    got: list[Delta] = []

    async def consume() -> None:
        async for delta in backend.generate(leaving):
            got.append(delta)

    task = asyncio.create_task(consume())
    other = asyncio.create_task(run(backend, staying))
    await asyncio.wait_for(gate.held.wait(), 60)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    held_at = len(gate.steps)  # the held step is the last one that may still carry it
    gate.open()
    _, final = await asyncio.wait_for(other, 120)
    assert final.finish_reason == "length" and final.usage is not None
    assert final.usage.completion_tokens == 3 * TOKENS
    after = gate.steps[held_at:]
    assert after and all(ids == (staying.request_id,) for ids in after), after
    assert all(d.finish_reason is None for d in got)


async def test_greedy_and_seeded_text_is_the_same_batched_alone_and_unbatched(
    backend: TransformersBackend, inbox: Inbox, tiny_llama: Path
) -> None:
    jobs = [completion_job(p, max_tokens=TOKENS, temperature=0) for p in PROMPTS]
    jobs.append(completion_job(PROMPTS[2], max_tokens=TOKENS, temperature=0.8, top_p=0.9, seed=3))
    together = [text for text, _ in await batched(backend, inbox, jobs)]
    alone = [(await run(backend, job))[0] for job in jobs]
    assert together == alone
    # The per-job path (model.generate) runs the same processors from the same seed.
    unbatched = await _started(_model(tiny_llama, batching=False))
    try:
        assert unbatched.decoder is None
        assert [(await run(unbatched, job))[0] for job in jobs] == alone
        job = completion_job(PROMPTS[1], max_tokens=TOKENS, **EXTENDED)
        text, logprobs = await with_logprobs(backend, job)
        per_job_text, per_job_logprobs = await with_logprobs(unbatched, job)
        assert text == per_job_text and logprobs == pytest.approx(per_job_logprobs, abs=1e-4)
    finally:
        await unbatched.stop()


#: vLLM's sampling extensions, with logprobs: the batched loop applies them as generate does.
EXTENDED = {
    "temperature": 0.9,
    "seed": 11,
    "top_k": 20,
    "min_p": 0.01,
    "repetition_penalty": 1.3,
    "min_tokens": TOKENS,
    "logprobs": 2,
}


async def with_logprobs(backend: TransformersBackend, job: Job) -> tuple[str, list[float]]:
    deltas = [d async for d in backend.generate(job)]
    logprobs = [t.logprob for d in deltas for t in d.logprobs or []]
    assert len(logprobs) == TOKENS
    return "".join(d.text for d in deltas), logprobs


async def test_a_sequence_joining_mid_flight_decodes_as_alone(
    backend: TransformersBackend, decoder: BatchDecoder, inbox: Inbox
) -> None:
    first = completion_job(PROMPTS[3], max_tokens=3 * TOKENS, temperature=0)
    joining = completion_job(PROMPTS[0], max_tokens=TOKENS, temperature=0)
    gate = Gate(lambda ids: len(ids) == 1 and len(gate.steps) > TOKENS)
    decoder.on_step = gate
    running = asyncio.create_task(run(backend, first))
    await asyncio.wait_for(gate.held.wait(), 60)  # the first is TOKENS steps in
    wanted = inbox.count + 1
    later = asyncio.create_task(run(backend, joining))
    await inbox.reached(wanted)
    gate.open()
    (text, _), (first_text, _) = await asyncio.wait_for(asyncio.gather(later, running), 120)
    assert any(len(ids) == 2 for ids in gate.steps)
    decoder.on_step = None
    assert text == (await run(backend, joining))[0]
    assert first_text == (await run(backend, first))[0]


async def test_a_seed_gives_the_same_text_whatever_is_batched_with_it(
    backend: TransformersBackend, inbox: Inbox
) -> None:
    seeded = {"max_tokens": TOKENS, "temperature": 1.0, "top_p": 0.9, "seed": 99}
    alone, _ = await run(backend, completion_job(PROMPTS[1], **seeded))
    others = [
        completion_job(PROMPTS[0], max_tokens=TOKENS, temperature=1.0),
        completion_job(PROMPTS[2], max_tokens=TOKENS, temperature=0.7, seed=5),
        completion_job(PROMPTS[3], max_tokens=TOKENS, temperature=0),
    ]
    results = await batched(backend, inbox, [completion_job(PROMPTS[1], **seeded), *others])
    assert results[0][0] == alone
