"""vLLM end to end: the real API, Redis and a ``llmspool worker`` process with the vllm backend
on the tiny model the tests build, driven with the openai client (``make test-vllm``).

The same tests run on the transformers backend (marker ``torch``): on the CPU in ``make test``,
and on CUDA in ``scripts/gpu-check.sh`` (``LLMSPOOL_TEST_TORCH_DEVICE=cuda``). The engine's own
counts (requests running at its last step, tokens generated) are read live from the worker's
``/metrics``. The figures of the concurrency test are printed and kept in docs/backends.md.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from llmspool.shared import keys
from tests.conftest import module_stack
from tests.engines import quiet_env, torch_device
from tests.helpers import RedisServer, Stack, scrape, wait_until

MODEL = "tiny"
M = {"model_name": MODEL}
#: The vllm engine's context here; the tiny model's own (transformers) is 2048.
CONTEXT = 2048
#: Tokens of a generation still running when the test acts on it.
LONG = 1900
#: A prompt far longer than either engine's context.
TOO_LONG = "the quick brown fox jumps over the lazy dog " * 700
USER = [{"role": "user", "content": "hello world, how are you today?"}]


@dataclass(frozen=True)
class Engine:
    backend: str
    requires: tuple[str, ...]
    options: Callable[[Path], dict[str, Any]]
    #: the engine reports its own running requests and generated tokens
    counts: bool
    #: the engine decodes concurrent requests together (all of 8 have begun before one ends)
    batches: bool


ENGINES = {
    "vllm": Engine(
        "vllm",
        ("vllm",),
        lambda model: {
            "model": str(model),
            "dtype": "float32",
            "max_model_len": CONTEXT,
            "enforce_eager": True,  # no torch.compile: minutes less to start on a CPU
            "engine_args": {"seed": 0},
        },
        counts=True,
        batches=True,
    ),
    "transformers": Engine(
        "transformers",
        ("torch", "transformers"),
        lambda model: {"model": str(model), "device": torch_device()},
        counts=False,
        batches=True,  # a batched decode loop (docs/backends.md)
    ),
}
MARKS = {"vllm": [pytest.mark.vllm], "transformers": [pytest.mark.torch]}

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _config(engine: Engine, model: Path) -> str:
    lines = [
        "[[models]]",
        f'name = "{MODEL}"',
        f'backend = "{engine.backend}"',
        "max_concurrency = 8",
        f"context_length = {CONTEXT}",
        "[models.options]",
    ]
    for key, value in engine.options(model).items():
        if isinstance(value, dict):
            value = "{ " + ", ".join(f"{k} = {v}" for k, v in value.items()) + " }"
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, str):
            value = f'"{value}"'
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


@dataclass
class Served:
    """The running stack, and the worker's own /metrics."""

    engine: Engine
    stack: Stack
    metrics_url: str

    def engine_counts(self) -> tuple[float, float]:
        """(requests the engine runs, tokens it generated), read live from the worker."""
        samples = scrape(self.metrics_url)
        running = samples["llmspool:worker_engine_requests_running", M]
        return running, samples["llmspool:worker_engine_generation_tokens_total", M]

    def dead(self) -> int:
        return int(self.stack.redis.client().xlen(keys.dead_stream(MODEL)))


@pytest.fixture(scope="module", params=[pytest.param(n, marks=MARKS[n]) for n in ENGINES])
def served(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    engine = ENGINES[request.param]
    missing = [name for name in engine.requires if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{engine.backend}: not installed: {', '.join(missing)}")
    quiet_env()
    model = request.getfixturevalue("tiny_llama")
    directory = tmp_path_factory.mktemp(f"e2e-{engine.backend}")
    stack = module_stack(redis_server, directory, _config(engine, model))
    try:
        stack.start_api()
        worker = stack.start_worker(MODEL, wait=False, LLMSPOOL_WORKER_METRICS_PORT="0")
        # vLLM's engine takes a minute or more to start on a busy CPU
        wait_until(
            lambda: stack.registered(worker.pid) or worker.poll() is not None,
            600,
            interval=0.5,
            what=f"the {engine.backend} worker (see {directory}/worker-{MODEL}.log)",
        )
        assert worker.poll() is None, stack.log(f"worker-{MODEL}.log")[-4000:]
        address = _worker_field(stack, "metrics")
        yield Served(engine, stack, f"http://{address}/metrics")
    finally:
        stack.stop()


def _worker_field(stack: Stack, name: str) -> str:
    client = stack.redis.client()
    (key,) = client.scan_iter(match=keys.worker_pattern())
    return str(client.hget(key, name))


@pytest.fixture
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.stack.base_url}/v1", api_key="none", max_retries=0)


def _chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(**{"model": MODEL, "messages": USER, **extra})


# --------------------------------------------------------------------------- chat


def test_chat_streamed_and_not_agree_with_usage(client: openai.OpenAI) -> None:
    whole = _chat(client, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and choice.message.content
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12

    usage = {"include_usage": True}
    chunks = list(_chat(client, max_tokens=12, temperature=0, stream=True, stream_options=usage))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens either way
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_streamed(client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="the quick", max_tokens=6, stream=True)
    texts = [c.choices[0].text for c in stream if c.choices]
    assert "".join(texts) and len(texts) <= 7


def test_logprobs_and_n_choices(client: openai.OpenAI) -> None:
    """Two greedy choices of one request, each token with its logprob and two alternatives."""
    whole = _chat(client, max_tokens=5, temperature=0, n=2, logprobs=True, top_logprobs=2)
    assert [c.index for c in whole.choices] == [0, 1]
    for choice in whole.choices:
        assert choice.finish_reason == "length"
        tokens = choice.logprobs.content
        assert len(tokens) == 5
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)
        # greedy: the chosen token is the likeliest
        assert all(t.logprob >= max(a.logprob for a in t.top_logprobs) - 1e-4 for t in tokens)
    assert whole.choices[0].message.content == whole.choices[1].message.content


# --------------------------------------------------------------------------- cancellation


def test_client_disconnect_aborts_the_engine_request(served: Served, client: openai.OpenAI) -> None:
    """A keeper request keeps the engine stepping; a leaver is cut by its client and leaves the
    engine: its running count drops while the keeper runs, long before the leaver could have
    ended by itself (the engine's own token count says so)."""
    keeper, leaver = _two_running(served, client)
    tokens_before = served.engine_counts()[1]
    leaver.close()  # the client goes away mid-generation

    wait_until(lambda: served.engine_counts()[0] == 1, 60, what="the leaver out of the engine")
    _, tokens_at_drop = served.engine_counts()
    if served.engine.counts:
        # had the leaver run on, the engine would have made LONG // 2 tokens for it alone
        assert tokens_at_drop - tokens_before < LONG // 2
    assert next(iter(keeper)).choices  # the keeper still streams
    keeper.close()
    wait_until(lambda: served.engine_counts()[0] == 0, 60, what="an idle engine")
    wait_until(lambda: served.stack.pending(MODEL) == 0, 30, what="both jobs settled")


def _two_running(served: Served, client: openai.OpenAI) -> tuple[Any, Any]:
    """A keeper and a leaver, both seen running in the engine. On a busy machine the keeper
    may end before the leaver reaches the engine: then both are dropped and sent again."""
    seen = []
    for _ in range(3):
        keeper = _chat(client, max_tokens=LONG, stream=True)
        next(iter(keeper))
        leaver = _chat(client, max_tokens=LONG // 2, stream=True)
        next(iter(leaver))
        try:
            wait_until(lambda: seen.append(served.engine_counts()) or seen[-1][0] == 2, 30)
            return keeper, leaver
        except TimeoutError:
            keeper.close()
            leaver.close()
            wait_until(lambda: served.engine_counts()[0] == 0, 60, what="an idle engine")
    raise AssertionError(f"never two requests in the engine; (running, tokens) seen: {seen[-20:]}")


# --------------------------------------------------------------------------- bad requests


def test_too_long_prompt_is_400_at_once_and_not_retried(
    served: Served, client: openai.OpenAI
) -> None:
    dead_before = served.dead()
    too_long = [{"role": "user", "content": TOO_LONG}]
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(client, messages=too_long, max_tokens=4)
    with pytest.raises(openai.APIError) as ended:  # a stream has begun: an error event ends it
        list(_chat(client, messages=too_long, max_tokens=4, stream=True))
    for error in (refused.value.body, ended.value.body):
        assert isinstance(error, dict) and error["code"] == "context_length_exceeded", error
        assert error["param"] == "messages" and error["type"] == "invalid_request_error"
    # the worker acknowledges a job just after its last frame: soon, not necessarily yet
    wait_until(lambda: served.stack.pending(MODEL) == 0, 30, what="both jobs acknowledged")
    refused_jobs = ("llmspool:worker_jobs_total", {**M, "outcome": "context_length_exceeded"})
    wait_until(lambda: scrape(served.metrics_url).get(refused_jobs) == 2, 30, what="settled")
    assert served.dead() == dead_before  # nothing dead-lettered
    retried = ("llmspool:worker_jobs_total", {**M, "outcome": "retried"})
    assert scrape(served.metrics_url).get(retried) is None  # each settled at its first attempt


# --------------------------------------------------------------------------- concurrency


@dataclass
class Timed:
    start: float
    first: float = 0.0
    end: float = 0.0
    tokens: int = 0


def _timed(client: openai.OpenAI, tokens: int) -> Timed:
    timed = Timed(start=time.perf_counter())
    usage = {"include_usage": True}
    stream = _chat(client, max_tokens=tokens, temperature=0, stream=True, stream_options=usage)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not timed.first:
            timed.first = time.perf_counter()
        if chunk.usage is not None:
            timed.tokens = chunk.usage.completion_tokens
    timed.end = time.perf_counter()
    return timed


def test_eight_concurrent_requests_share_one_engine(
    served: Served, client: openai.OpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = 64
    _timed(client, tokens)  # warm
    one = _timed(client, tokens)
    barrier = threading.Barrier(8)

    def together() -> Timed:
        barrier.wait()
        return _timed(client, tokens)

    with ThreadPoolExecutor(8) as pool:
        eight = list(pool.map(lambda _: together(), range(8)))
    assert [t.tokens for t in [one, *eight]] == [tokens] * 9
    if served.engine.batches:  # served together: every first token came before any reply ended
        assert max(t.first for t in eight) < min(t.end for t in eight)
    assert served.stack.consumers(MODEL) == 1
    wall_one = one.end - one.start
    wall_eight = max(t.end for t in eight) - min(t.start for t in eight)
    with capsys.disabled():
        print(
            f"\n[{served.engine.backend}] one request of {tokens} tokens: {wall_one:.2f} s; "
            f"8 concurrent: {wall_eight:.2f} s wall ({wall_eight / wall_one:.2f}x one request's, "
            f"{8 * tokens / wall_eight:.0f} tok/s against {tokens / wall_one:.0f})"
        )
