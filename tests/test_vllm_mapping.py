"""The vllm backend's own code, without vLLM: request → SamplingParams, outputs → deltas, abort.

A stand-in engine plays vLLM's AsyncLLM (``generate`` yields delta ``RequestOutput``-shaped
objects, ``abort`` is recorded). ``make test-vllm`` runs the real engine through the contract
suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmspool.consumers.backends import create_backend
from llmspool.consumers.backends.base import SamplingParams
from llmspool.consumers.backends.vllm import (
    EngineStats,
    Options,
    OutputReader,
    VllmBackend,
    engine_args,
    sampling_kwargs,
)
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    UnsupportedCapability,
)
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest

MODEL = ModelConfig(
    name="tiny", backend="vllm", max_concurrency=16, options={"model": "org/tiny-model"}
)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class Output:
    outputs: list[Completion]
    finished: bool = False
    prompt_token_ids: list[int] | None = None


class Tokenizer:
    chat_template = "{{ messages }}"

    def __call__(self, text: str) -> Any:
        return type("Encoding", (), {"input_ids": [1, *range(10, 10 + len(text.split()))]})

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        assert kwargs == {"add_generation_prompt": True, "tokenize": True}
        return [1] + [7] * len(messages) + [9]


@dataclass
class Engine:
    """Plays AsyncLLM: one delta output per word of ``words``, then a final one."""

    words: list[str]
    finish: str = "length"
    delay: float = 0.0
    aborted: list[str] = field(default_factory=list)
    requests: list[tuple[Any, Any, str]] = field(default_factory=list)

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Output]:
        self.requests.append((prompt, params, request_id))
        ids = prompt["prompt_token_ids"]
        for i, word in enumerate(self.words):
            await asyncio.sleep(self.delay)
            last = i == len(self.words) - 1
            yield Output(
                [Completion(word, [100 + i], self.finish if last else None)],
                finished=last,
                prompt_token_ids=ids,
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.words = []


def job(kind: JobKind = JobKind.CHAT, **extra: Any) -> Job:
    body: Any
    if kind is JobKind.CHAT:
        messages = [{"role": "user", "content": "hi"}]
        body = ChatCompletionRequest.model_validate(
            {"model": "tiny", "messages": messages, **extra}
        )
    else:
        body = CompletionRequest.model_validate({"model": "tiny", "prompt": "a b c", **extra})
    return Job(request_id="r", kind=kind, model="tiny", body=body, deadline=time.time() + 60)


async def started(engine: Engine) -> VllmBackend:
    backend = VllmBackend(
        MODEL, Options.model_validate(MODEL.options), engine, make_params=lambda **kw: kw
    )
    await backend.start()
    return backend


def test_sampling_parameters_map_one_to_one() -> None:
    params = SamplingParams(
        max_tokens=7,
        temperature=0.3,
        top_p=0.9,
        stop=("\n", "END"),
        seed=5,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
    )
    assert sampling_kwargs(params) == {
        "n": 1,
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 5,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
    }


def test_vllms_extensions_map_when_set() -> None:
    params = SamplingParams(
        max_tokens=None,
        logprobs=3,
        top_k=20,
        min_p=0.1,
        repetition_penalty=1.2,
        min_tokens=4,
        ignore_eos=True,
        stop_token_ids=(7, 8),
        logit_bias=((5, -2.0),),
    )
    kwargs = sampling_kwargs(params)
    assert kwargs["max_tokens"] is None  # vLLM: the rest of the context
    assert {k: kwargs[k] for k in ("logprobs", "top_k", "min_p", "min_tokens")} == {
        "logprobs": 3,
        "top_k": 20,
        "min_p": 0.1,
        "min_tokens": 4,
    }
    assert kwargs["repetition_penalty"] == 1.2 and kwargs["ignore_eos"] is True
    assert kwargs["stop_token_ids"] == [7, 8] and kwargs["logit_bias"] == {5: -2.0}
    plain = sampling_kwargs(SamplingParams(max_tokens=3))
    assert "top_k" not in plain and "logprobs" not in plain  # vLLM's own defaults stay


def test_logprobs_become_openais_shape() -> None:
    position = {
        42: Logprob(-0.5, rank=2, decoded_token=" b"),
        41: Logprob(-0.2, rank=1, decoded_token=" a"),
        40: Logprob(-3.0, rank=3, decoded_token=" c"),
    }
    reader = OutputReader(prompt_tokens=1, logprobs=2)
    deltas = reader.read(Output([Completion(" b", [42], logprobs=[position])]))
    token = (deltas[0].logprobs or [])[0]
    assert (token.token, token.logprob, token.bytes) == (" b", -0.5, list(b" b"))
    assert [(t.token, t.logprob) for t in token.top_logprobs] == [(" a", -0.2), (" b", -0.5)]


async def test_a_prompt_over_max_model_len_is_refused_before_the_engine() -> None:
    engine = Engine(["x"])
    backend = await started(engine)
    backend.max_model_len = 3
    with pytest.raises(ContextLengthExceeded):
        [d async for d in backend.generate(job(JobKind.COMPLETION, max_tokens=1))]
    assert engine.requests == []


@pytest.mark.parametrize(
    ("message", "error", "code"),
    [
        (
            "The decoder prompt (length 5000) is longer than the maximum model length of 1024.",
            ContextLengthExceeded,
            "context_length_exceeded",
        ),
        ("min_p must be in [0, 1], got 2.", InvalidRequest, None),
    ],
)
async def test_the_engines_value_errors_are_request_errors(
    message: str, error: type[Exception], code: str | None
) -> None:
    engine = Engine(["x"])
    backend = await started(engine)

    async def refuse(*args: Any) -> AsyncIterator[Output]:
        raise ValueError(message)
        yield  # an async generator, like AsyncLLM.generate

    engine.generate = refuse  # type: ignore[method-assign]
    with pytest.raises(error) as caught:
        [d async for d in backend.generate(job(max_tokens=1))]
    assert isinstance(caught.value, InvalidRequest) and caught.value.code == code


def test_engine_args_take_max_num_seqs_from_the_config() -> None:
    args = engine_args(MODEL, Options(model="org/tiny-model", engine_args={"swap_space": 0}))
    assert args["max_num_seqs"] == 16 and args["model"] == "org/tiny-model"
    assert args["served_model_name"] == "tiny" and args["swap_space"] == 0


def test_a_missing_model_directory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no model directory at /nonexistent"):
        engine_args(MODEL, Options(model="/nonexistent/model"))


async def test_without_vllm_start_names_the_extra() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    backend = create_backend(MODEL)
    with pytest.raises(ConfigError, match=r"llmspool\[vllm\]"):
        await backend.start()


def test_outputs_become_deltas_with_the_engines_usage() -> None:
    reader = OutputReader(prompt_tokens=3)
    first = reader.read(Output([Completion("Hel", [1, 2])], prompt_token_ids=[1, 2, 3, 4]))
    assert [(d.text, d.tokens) for d in first] == [("Hel", 2)] and not reader.finished
    last = reader.read(Output([Completion("lo", [3], "stop")], finished=True))
    assert [d.text for d in last] == ["lo", ""] and reader.finished
    assert last[-1].finish_reason == "stop"
    assert last[-1].usage is not None and last[-1].usage.model_dump() == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
    }


def test_an_aborted_output_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="abort"):
        OutputReader(1).read(Output([Completion("", [], "abort")], finished=True))


async def test_generate_streams_through_the_chat_template() -> None:
    engine = Engine(["The", " cat", " sat"])
    backend = await started(engine)
    deltas = [d async for d in backend.generate(job(max_tokens=3, temperature=0, seed=2))]
    assert "".join(d.text for d in deltas) == "The cat sat"
    assert deltas[-1].finish_reason == "length" and deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3 and deltas[-1].usage.prompt_tokens == 3
    prompt, params, _ = engine.requests[0]
    assert prompt == {"prompt_token_ids": [1, 7, 9]}  # the tokenizer's chat template
    assert params["max_tokens"] == 3 and params["seed"] == 2
    assert engine.aborted == []  # a finished request is not aborted


async def test_completion_prompt_is_tokenized_plainly() -> None:
    engine = Engine(["x"], finish="stop")
    backend = await started(engine)
    deltas = [d async for d in backend.generate(job(JobKind.COMPLETION, max_tokens=2))]
    assert engine.requests[0][0] == {"prompt_token_ids": [1, 10, 11, 12]}
    assert deltas[-1].finish_reason == "stop"


async def test_cancelling_a_job_aborts_it_in_the_engine() -> None:
    engine = Engine(["w"] * 1000, delay=0.001)
    backend = await started(engine)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.generate(job(max_tokens=1000)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert engine.aborted == [engine.requests[0][2]]


async def test_a_model_without_chat_template_refuses_chat() -> None:
    engine = Engine(["x"])
    backend = await started(engine)
    backend._tokenizer.chat_template = None
    with pytest.raises(UnsupportedCapability, match="no chat template"):
        [d async for d in backend.generate(job())]


def test_engine_stats_keep_the_last_step_and_count_tokens() -> None:
    stats = EngineStats()
    logger = stats.factory(None, 0)
    scheduler = type("SchedulerStats", (), {"num_running_reqs": 3, "num_waiting_reqs": 1})
    iteration = type("IterationStats", (), {"num_generation_tokens": 3})
    logger.record(scheduler, iteration)
    logger.record(None, iteration)
    assert (stats.running, stats.waiting, stats.generated) == (3, 1, 6)


async def test_the_engine_counts_reach_the_worker() -> None:
    engine = Engine(["x"])
    backend = await started(engine)
    backend.stats.record(type("S", (), {"num_running_reqs": 2, "num_waiting_reqs": 0}), None)
    assert backend.engine_running == 2  # no output processor to ask: the last step's count
    engine.output_processor = type("P", (), {"get_num_unfinished_requests": lambda self: 0})()  # type: ignore[attr-defined]
    assert backend.engine_running == 0  # an idle engine: its last step's count is stale


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}


@pytest.mark.parametrize(
    ("extra", "structured"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": WEATHER},
                }
            },
            {"json": WEATHER},
        ),
        ({"response_format": {"type": "json_object"}}, {"json_object": True}),
        ({"guided_regex": "[a-z]+"}, {"regex": "[a-z]+"}),
        ({"guided_choice": ["a", "b"]}, {"choice": ["a", "b"]}),
        ({"structured_outputs": {"grammar": 'root ::= "a"'}}, {"grammar": 'root ::= "a"'}),
    ],
)
async def test_constraints_become_structured_outputs(
    extra: dict[str, Any], structured: dict[str, Any]
) -> None:
    engine = Engine(["x"], finish="stop")
    backend = await started(engine)
    _ = [d async for d in backend.generate(job(**extra))]
    assert engine.requests[0][1]["structured_outputs"] == structured


async def test_a_forced_tool_call_is_constrained_and_streamed_as_a_call() -> None:
    engine = Engine(
        ['{"name": "get_weather", ', '"arguments": {"city": ', '"Oslo"}}'], finish="stop"
    )
    backend = await started(engine)
    deltas = [d async for d in backend.generate(job(tools=[TOOL], tool_choice="required"))]
    schema = engine.requests[0][1]["structured_outputs"]["json"]
    assert schema["properties"]["name"] == {"const": "get_weather"}
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments or "" for c in calls if c.function) == '{"city": "Oslo"}'
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.vllm
def test_structured_outputs_are_vllms_own_params() -> None:
    pytest.importorskip("vllm")
    from llmspool.consumers.backends.vllm import _structured_params

    (value,) = _structured_params({"json": WEATHER}).values()
    assert type(value).__name__ in ("StructuredOutputsParams", "GuidedDecodingParams")
