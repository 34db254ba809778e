"""The backend contract: every backend passes the same tests (engines in tests/engines.py).

Each engine is started once per module (module-scoped fixture) and runs every test with few
tokens. An engine whose packages are not installed is skipped, naming what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from llmspool.consumers.backends import create_backend
from llmspool.consumers.backends.base import Backend, Delta, Prompt, Tokenization, tokenization_of
from llmspool.shared import capabilities
from llmspool.shared.errors import ConfigError, InvalidRequest, UnsupportedCapability
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest
from llmspool.shared.tokens import TokenizeRequest
from tests.engines import SPECS, EngineSpec, Resources

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox"
CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


# --------------------------------------------------------------------------- fixtures


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=[getattr(pytest.mark, m) for m in spec.marks], id=name)
        for name, spec in SPECS.items()
    ]


@pytest.fixture(scope="module", params=_params())
def engine(request: pytest.FixtureRequest) -> tuple[EngineSpec, Resources]:
    """An engine's spec and the session resources its options need."""
    spec = SPECS[request.param]
    missing = spec.missing()
    if missing:
        pytest.skip(f"{spec.backend}: not installed: {', '.join(missing)}")
    return spec, {name: request.getfixturevalue(name) for name in spec.resources}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(engine: tuple[EngineSpec, Resources]) -> AsyncIterator[Backend]:
    spec, resources = engine
    started = create_backend(spec.model(resources))
    await started.start()
    yield started
    await started.stop()


# --------------------------------------------------------------------------- helpers


def chat_job(messages: list[dict[str, str]] | None = None, **extra: Any) -> Job:
    body = ChatCompletionRequest.model_validate(
        {"model": "contract", "messages": messages or CHAT, **extra}
    )
    return _job(JobKind.CHAT, body)


def completion_job(prompt: str = PROMPT, **extra: Any) -> Job:
    body = CompletionRequest.model_validate({"model": "contract", "prompt": prompt, **extra})
    return _job(JobKind.COMPLETION, body)


def _job(kind: JobKind, body: Any) -> Job:
    return Job(
        request_id=f"contract-{uuid.uuid4().hex[:8]}",
        kind=kind,
        model="contract",
        body=body,
        deadline=time.time() + 600,
    )


async def run(backend: Backend, job: Job) -> tuple[str, Delta]:
    deltas = [d async for d in backend.generate(job)]
    check_shape(deltas)
    return "".join(d.text for d in deltas), deltas[-1]


def check_shape(deltas: list[Delta]) -> None:
    """Text deltas, then exactly one final delta with a finish reason and usage, last."""
    assert deltas, "the backend yielded nothing"
    assert all(d.finish_reason is None for d in deltas[:-1])
    final = deltas[-1]
    assert final.finish_reason in ("stop", "length") and final.usage is not None
    usage = final.usage
    assert usage.prompt_tokens >= 0 and usage.completion_tokens >= 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def stop_candidate(text: str) -> str | None:
    """A short plain piece of ``text`` (not at its start) to use as a stop sequence."""
    for match in re.finditer(r"[A-Za-z0-9]{2,3}", text):
        if match.start() >= 1:
            return match.group()
    return None


# --------------------------------------------------------------------------- the contract


async def test_streams_text_in_order_then_one_final_delta(backend: Backend) -> None:
    deltas = [d async for d in backend.generate(completion_job(max_tokens=8, temperature=0))]
    check_shape(deltas)
    assert len([d for d in deltas if d.text]) >= 2, "the text came in one piece, not streamed"
    again, _ = await run(backend, completion_job(max_tokens=8, temperature=0))
    assert "".join(d.text for d in deltas) == again  # greedy decoding repeats itself


async def test_chat_uses_the_models_template(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    text, final = await run(backend, chat_job(max_tokens=6, temperature=0))
    assert final.usage is not None
    if engine[0].counts_prompt:  # the system and user turns, with the template's markers
        assert final.usage.prompt_tokens > 5
    assert text or final.finish_reason == "stop"


async def test_max_tokens_ends_with_length(backend: Backend) -> None:
    text, final = await run(backend, completion_job(max_tokens=4, temperature=0))
    assert text and final.finish_reason == "length"
    assert final.usage is not None and final.usage.completion_tokens == 4


async def test_stop_sequence_ends_with_stop(backend: Backend) -> None:
    full, _ = await run(backend, completion_job(max_tokens=12, temperature=0))
    stop = stop_candidate(full)
    if stop is None:
        pytest.skip(f"no plain text to stop on in {full!r}")
    text, final = await run(backend, completion_job(max_tokens=12, temperature=0, stop=[stop]))
    assert final.finish_reason == "stop"
    assert text == full[: full.index(stop)]


async def test_same_seed_same_sampled_text(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    if not engine[0].seeded:
        pytest.skip(f"{engine[0].backend} does not promise seeded sampling")
    job = {"max_tokens": 8, "temperature": 1.0, "seed": 1234}
    first, _ = await run(backend, completion_job(**job))
    again, _ = await run(backend, completion_job(**job))
    assert first == again


async def test_cancel_mid_generation_stops_and_frees_the_engine(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    got: list[Delta] = []
    first = asyncio.Event()

    async def consume() -> None:
        job = completion_job(max_tokens=engine[0].long_tokens, temperature=0)
        async for delta in backend.generate(job):
            got.append(delta)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 120)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 60)
    assert all(d.finish_reason is None for d in got), "the job ran to its end"
    _, final = await asyncio.wait_for(run(backend, completion_job(max_tokens=3)), 120)
    assert final.finish_reason is not None  # the engine is ready for the next job


async def test_runs_max_concurrency_jobs_at_once(backend: Backend) -> None:
    jobs = [
        completion_job(f"{PROMPT} number {i}", max_tokens=6, temperature=0)
        for i in range(backend.max_concurrency)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(run(backend, j) for j in jobs)), 300)
    for text, final in results:
        assert final.usage is not None and final.usage.completion_tokens <= 6
        assert text or final.finish_reason == "stop"


async def test_embeddings_or_a_clear_refusal(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    texts = ["hello world", "the cat sat on the mat", "hello world"]
    if not engine[0].embeddings:
        with pytest.raises(engine[0].refusal):
            await backend.embed(texts)
        return
    vectors = await backend.embed(texts)
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1
    for vector in vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3  # L2-normalised
    assert max(abs(a - b) for a, b in zip(vectors[0], vectors[2], strict=True)) < 1e-3
    assert vectors[0] != vectors[1]


async def test_a_prompt_over_the_context_is_a_request_error(backend: Backend) -> None:
    """The request's fault, found by the backend or its engine: a 400 the worker settles at
    once (never a retry, never the dead stream)."""
    with pytest.raises(InvalidRequest) as caught:
        await run(backend, completion_job("word " * 3000, max_tokens=4))
    assert caught.value.code == "context_length_exceeded"
    _, final = await run(backend, completion_job(max_tokens=2))  # and the engine goes on
    assert final.finish_reason is not None


async def test_logprobs_of_each_token_with_alternatives(backend: Backend) -> None:
    deltas = [
        d async for d in backend.generate(completion_job(max_tokens=4, temperature=0, logprobs=2))
    ]
    check_shape(deltas)
    tokens = [token for d in deltas for token in d.logprobs or []]
    assert tokens, "no logprobs"
    for token in tokens:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].logprob >= token.logprob - 1e-3  # greedy: the likeliest
    plain = [d async for d in backend.generate(completion_job(max_tokens=2, temperature=0))]
    assert all(d.logprobs is None for d in plain)


async def test_every_parameter_of_its_row_runs(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    """The sampling parameters shared/capabilities.py says the backend honours reach it."""
    row = capabilities.of(engine[0].backend)
    wanted = {
        "top_k": 5,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "min_tokens": 2,
        "stop_token_ids": [3],
        "logit_bias": {"5": -1.0},
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
    }
    honoured = {name: value for name, value in wanted.items() if row.honours(name)}
    _, final = await run(backend, completion_job(max_tokens=4, temperature=0.7, seed=3, **honoured))
    assert final.usage is not None and final.usage.completion_tokens <= 4
    if "min_tokens" in honoured:
        assert final.usage.completion_tokens >= 2 or final.finish_reason == "stop"


WORDS = "the quick brown fox jumps over the lazy dog"  # in every vocabulary, the fake's too


async def test_tokenize_counts_what_generation_counts(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    if not engine[0].tokenizes:
        with pytest.raises(UnsupportedCapability, match="/tokenize"):
            await backend.tokenize(Tokenization(Prompt(text=WORDS), add_special_tokens=True))
        return
    chat = tokenization_of(_job(JobKind.TOKENIZE, TokenizeRequest(model="c", messages=CHAT)))
    _, final = await run(backend, chat_job(max_tokens=1))
    assert final.usage is not None
    assert len(await backend.tokenize(chat)) == final.usage.prompt_tokens
    plain = Tokenization(Prompt(text=PROMPT), add_special_tokens=True)
    _, final = await run(backend, completion_job(max_tokens=1))
    assert final.usage is not None
    assert len(await backend.tokenize(plain)) == final.usage.prompt_tokens


async def test_detokenize_gives_the_text_back(
    backend: Backend, engine: tuple[EngineSpec, Resources]
) -> None:
    if not engine[0].tokenizes:
        with pytest.raises(UnsupportedCapability, match="/detokenize"):
            await backend.detokenize([1, 2])
        return
    tokens = await backend.tokenize(Tokenization(Prompt(text=WORDS), add_special_tokens=False))
    assert (await backend.detokenize(tokens)).strip() == WORDS
    with_bos = await backend.tokenize(Tokenization(Prompt(text=WORDS), add_special_tokens=True))
    assert len(with_bos) >= len(tokens)  # BOS, where the tokenizer has one
    if engine[0].checks_token_ids:
        with pytest.raises(InvalidRequest, match="vocabulary"):
            await backend.detokenize([*tokens, 2**31 - 1])


async def test_starts_and_stops_cleanly(engine: tuple[EngineSpec, Resources]) -> None:
    spec, resources = engine
    fresh = create_backend(spec.model(resources))
    await fresh.start()
    _, final = await run(fresh, completion_job(max_tokens=2, temperature=0))
    assert final.finish_reason is not None
    await fresh.stop()
    await fresh.stop()  # stopping twice is harmless


async def test_bad_model_path_is_a_clear_config_error(
    engine: tuple[EngineSpec, Resources],
) -> None:
    spec, resources = engine
    if spec.bad_model is None:
        pytest.skip(f"{spec.backend} has no model file")
    broken = create_backend(spec.model(resources, **spec.bad_model))
    with pytest.raises(ConfigError, match="nonexistent"):
        await broken.start()
