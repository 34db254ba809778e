"""The ``llama_cpp`` backend: llama-cpp-python on the CPU (the default).

The engine is blocking and not thread-safe, so one job runs at a time in a worker thread; its
tokens reach the event loop through :class:`ThreadedGeneration`, which stops the engine within
one token when the job is cancelled. Without a ``model_path`` it serves the packaged
gemma-3-270m with the Gemma 3 turn template. Embeddings come from a second context of the same
file, made on the first embedding request (``embedding=True``, mean pooling).
"""

from __future__ import annotations

import asyncio
import codecs
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from llmspool.consumers import tools
from llmspool.consumers.backends import gemma
from llmspool.consumers.backends.base import (
    BackendOptions,
    Delta,
    Prompt,
    SamplingParams,
    StopMatcher,
    ThreadedGeneration,
    Tokenization,
    check_token_ids,
    generation_budget,
    prompt_of,
    sampling_params,
)
from llmspool.consumers.backends.gbnf import GrammarSampling, grammar_text
from llmspool.consumers.packaged import GEMMA_3_270M, ensure_packaged
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    UnsupportedParameter,
)
from llmspool.shared.messages import Job
from llmspool.shared.protocol import ChatCompletionTokenLogprob, TopLogprob, Usage
from llmspool.shared.settings import Settings

#: What gemma.render ends a conversation with: the start of the model's turn.
_GEMMA_GENERATION_PROMPT = "<start_of_turn>model\n"
MISSING = "the llama_cpp backend needs llama-cpp-python: pip install 'llmspool[llamacpp]'"


class Options(BackendOptions):
    model_path: str | None = Field(
        default=None, description="GGUF file to serve; unset: the packaged gemma-3-270m."
    )
    chat_template: Literal["gemma3", "gguf"] = Field(
        default="gemma3",
        description="gemma3: the Gemma 3 turn template; gguf: the file's own chat template.",
    )
    n_ctx: int = Field(default=2048, ge=64, description="Context size in tokens.")
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads; unset: all.")
    n_batch: int = Field(default=512, ge=1, description="Prompt processing batch size.")
    stop_token_ids: tuple[int, ...] = Field(
        default=gemma.STOP_TOKEN_IDS, description="Token ids that end a generation."
    )


class LlamaCppBackend:
    """One llama.cpp model in this process."""

    def __init__(self, model: ModelConfig, options: Options, settings: Settings) -> None:
        self.model = model
        self.options = options
        self.settings = settings
        self.max_concurrency = 1  # llama.cpp contexts are not thread-safe
        self.max_model_len: int | None = None  # the context's size, once loaded
        self._llm: Any = None
        self._lock = threading.Lock()
        self._formatter: Any = None
        self._embedder: Any = None  # a second context, made on the first embedding request
        self._embed_lock = threading.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self._llm = self._open(n_batch=self.options.n_batch)
        self.max_model_len = int(self._llm.n_ctx())
        if self.options.chat_template == "gguf":
            self._formatter = _gguf_formatter(self._llm)

    def _open(self, **extra: Any) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError(MISSING) from exc
        path = self.model_path()
        if not path.is_file():
            raise ConfigError(f"model {self.model.name}: no model file at {path}")
        return Llama(
            model_path=str(path),
            n_ctx=self.options.n_ctx,
            n_threads=self.options.n_threads or os.cpu_count() or 1,
            verbose=False,
            **extra,
        )

    def model_path(self) -> Path:
        if self.options.model_path:
            return Path(self.options.model_path).expanduser()
        return ensure_packaged(GEMMA_3_270M, self.settings.cache_dir)

    async def stop(self) -> None:
        llm, self._llm = self._llm, None
        embedder, self._embedder = self._embedder, None
        for engine in (llm, embedder):
            if engine is not None:
                engine.close()

    def render(self, prompt: Prompt) -> str:
        """The text the engine sees for ``prompt``."""
        if prompt.text is not None:
            return prompt.text
        if self._formatter is not None:
            messages = [m.model_dump(exclude_none=True) for m in prompt.messages]
            rendered = self._formatter(messages=messages)
            return str(rendered.prompt)
        return gemma.render(prompt.messages)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        tokens: list[int] = self._llm.tokenize(
            self.render(prompt).encode(), add_bos=True, special=prompt.is_chat
        )
        return tokens

    async def tokenize(self, request: Tokenization) -> list[int]:
        return await asyncio.to_thread(self._tokenize, self._started(), request)

    def _tokenize(self, llm: Any, request: Tokenization) -> list[int]:
        """A prompt as generation tokenizes it (BOS with ``add_special_tokens``); messages as
        the engine is given them (the template, with its BOS), plus a second BOS with
        ``add_special_tokens`` (as vLLM adds the tokenizer's tokens to the template's)."""
        prompt = request.prompt
        with self._lock:
            if prompt.text is not None:
                return list(llm.tokenize(prompt.text.encode(), add_bos=request.add_special_tokens))
            ids = list(llm.tokenize(self._chat_text(request).encode(), add_bos=True, special=True))
        return [llm.token_bos(), *ids] if request.add_special_tokens else ids

    def _chat_text(self, request: Tokenization) -> str:
        text = self.render(request.prompt)
        if request.add_generation_prompt:
            return text
        if self._formatter is not None:  # llama-cpp-python's formatter always adds it
            raise UnsupportedParameter(
                "add_generation_prompt: false is not supported with chat_template = 'gguf'",
                param="add_generation_prompt",
            )
        return text.removesuffix(_GEMMA_GENERATION_PROMPT)

    async def detokenize(self, tokens: list[int]) -> str:
        llm = self._started()
        check_token_ids(tokens, llm.n_vocab())  # llama.cpp does not check them itself
        return await asyncio.to_thread(self._detokenize, llm, tokens)

    def _detokenize(self, llm: Any, tokens: list[int]) -> str:
        with self._lock:
            return str(llm.detokenize(tokens).decode(errors="replace"))

    def _started(self) -> Any:
        if self._llm is None:
            raise EngineError("the llama_cpp backend is not started")
        return self._llm

    def generate(self, job: Job) -> AsyncIterator[Delta]:
        params = sampling_params(job, self.model)
        plan = tools.plan_of(job)
        prompt = tools.plain_prompt(prompt_of(job), plan)
        grammar = _Grammar.of(plan.constraint)
        generation = ThreadedGeneration(lambda stop: self._produce(prompt, params, stop, grammar))
        return tools.shaped(plan, generation.__aiter__())

    def _produce(
        self,
        prompt: Prompt,
        params: SamplingParams,
        stop: threading.Event,
        grammar: _Grammar | None = None,
    ) -> Iterator[Delta]:
        with self._lock:
            tokens = self.prompt_ids(prompt)
            limit = generation_budget(params, len(tokens), self.options.n_ctx, prompt.is_chat)
            self._llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
            try:
                yield from self._sample(tokens, params, limit, stop, grammar)
            except ValueError as exc:  # the engine refusing what the request asked for
                raise request_error(exc, prompt.is_chat) from exc

    def _sample(
        self,
        tokens: Sequence[int],
        params: SamplingParams,
        limit: int,
        stop: threading.Event,
        grammar: _Grammar | None = None,
    ) -> Iterator[Delta]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher(params.stop)
        ends = set() if params.ignore_eos else {*self.options.stop_token_ids}
        ends.update(params.stop_token_ids)
        produced, finish = 0, "length"
        for token in self._tokens(tokens, params, grammar):
            if stop.is_set():
                return
            if token in ends:
                finish = "stop"
                break
            produced += 1
            piece = self._llm.detokenize([token])
            text = matcher.feed(decoder.decode(piece))
            logprobs = self._logprobs(token, piece, params.logprobs)
            if text or logprobs:
                yield Delta(text=text, tokens=1, logprobs=logprobs)
            if matcher.matched:
                finish = "stop"
                break
            if produced >= limit:
                break
        tail = "" if matcher.matched else matcher.flush() + decoder.decode(b"", final=True)
        usage = Usage(
            prompt_tokens=len(tokens),
            completion_tokens=produced,
            total_tokens=len(tokens) + produced,
        )
        yield Delta(text=tail, finish_reason="stop" if finish == "stop" else "length", usage=usage)

    def _tokens(
        self, tokens: Sequence[int], params: SamplingParams, grammar: _Grammar | None
    ) -> Iterator[int]:
        """The engine's tokens, under the job's grammar if it has one."""
        args = self._engine_args(params, len(tokens))
        if grammar is None:
            yield from self._llm.generate(tokens, **args)
            return
        args.pop("reset", None)
        sampling = GrammarSampling(self._llm, grammar.text, grammar.param)
        chain = self._llm._init_sampler(**args)
        try:
            self._llm.reset()
            self._llm.eval(tokens)
            while True:
                token = sampling.sample(chain)
                yield token
                self._llm.eval([token])
        finally:
            sampling.close()
            chain.close()

    def _engine_args(self, params: SamplingParams, prompt_tokens: int) -> dict[str, Any]:
        args = _engine_args(params)
        processors = self._processors(params, prompt_tokens)
        if processors:
            args["logits_processor"] = processors
        return args

    def _processors(self, params: SamplingParams, prompt_tokens: int) -> list[Any]:
        """Logits processors for ``logit_bias`` and ``min_tokens`` (none on the plain path)."""
        processors: list[Any] = []
        import numpy as np

        if params.logit_bias:
            ids = np.array([token for token, _ in params.logit_bias], dtype=np.intc)
            bias = np.array([value for _, value in params.logit_bias], dtype=np.single)
            processors.append(_Bias(ids, bias))
        if params.min_tokens:
            ends = [*self.options.stop_token_ids, *params.stop_token_ids]
            processors.append(_NoEndBefore(ends, prompt_tokens + params.min_tokens))
        return processors

    def _logprobs(
        self, token: int, piece: bytes, top: int | None
    ) -> list[ChatCompletionTokenLogprob] | None:
        """The sampled token's logprob and the ``top`` likeliest, from the logits the engine
        sampled it from (still in the context until the generator resumes)."""
        if top is None:
            return None
        import llama_cpp
        import numpy as np

        row = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        logits = np.ctypeslib.as_array(row, shape=(self._llm.n_vocab(),))
        return [token_logprob(logits, token, piece, top, self._llm.detokenize)]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised embeddings, one per text (truncated to the context)."""
        if self._llm is None:
            raise EngineError("the llama_cpp backend is not started")
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        with self._embed_lock:
            if self._embedder is None:
                self._embedder = self._embedding_context()
            vectors: list[list[float]] = self._embedder.embed(texts, normalize=True)
            return vectors

    def _embedding_context(self) -> Any:
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN

        # A pooled embedding needs the whole text in one batch: batch = context.
        return self._open(
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_MEAN,
            n_batch=self.options.n_ctx,
            n_ubatch=self.options.n_ctx,
        )


def _engine_args(params: SamplingParams) -> dict[str, Any]:
    top_k = params.top_k if params.top_k is not None and params.top_k > 0 else 0
    return {
        "temp": params.temperature,
        "top_p": params.top_p,
        "top_k": top_k if params.temperature > 0 else 1,
        "min_p": params.min_p or 0.0,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repeat_penalty": params.repetition_penalty or 1.0,
        "reset": True,
    }


def token_logprob(
    logits: Any, token: int, piece: bytes, top: int, detokenize: Any
) -> ChatCompletionTokenLogprob:
    """``token``'s logprob under ``logits`` (log-softmax), with the ``top`` likeliest."""
    import numpy as np

    peak = float(logits.max())
    norm = peak + float(np.log(np.exp(logits - peak).sum()))
    best: Any = np.argpartition(-logits, top)[:top] if top else []
    ranked = sorted(best, key=lambda i: -logits[i])
    alternatives = []
    for i in ranked:
        raw = detokenize([int(i)])
        alternatives.append(
            TopLogprob(
                token=raw.decode(errors="replace"),
                logprob=float(logits[i]) - norm,
                bytes=list(raw),
            )
        )
    return ChatCompletionTokenLogprob(
        token=piece.decode(errors="replace"),
        logprob=float(logits[token]) - norm,
        bytes=list(piece),
        top_logprobs=alternatives,
    )


class _Bias:
    """A logits processor adding ``logit_bias`` to the logits of its token ids."""

    def __init__(self, ids: Any, bias: Any) -> None:
        self.ids, self.bias = ids, bias

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores[self.ids] += self.bias
        return scores


class _NoEndBefore:
    """A logits processor that keeps the end tokens out until ``length`` tokens are in the
    context (``min_tokens``)."""

    def __init__(self, ends: list[int], length: int) -> None:
        self.ends, self.length = ends, length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if len(input_ids) < self.length:
            scores[self.ends] = float("-inf")
        return scores


def request_error(exc: ValueError, chat: bool) -> InvalidRequest:
    """A ValueError llama.cpp raised for a request: over the context, or a bad parameter."""
    message = str(exc)
    if "context window" in message or "exceed context" in message:
        return ContextLengthExceeded(message, param="messages" if chat else "prompt")
    return InvalidRequest(f"llama.cpp refused the request: {message}")


@dataclass(frozen=True, slots=True)
class _Grammar:
    """A job's grammar (GBNF text), made before the job takes the engine."""

    text: str
    param: str

    @classmethod
    def of(cls, constraint: tools.Constraint | None) -> _Grammar | None:
        if constraint is None:
            return None
        return cls(grammar_text(constraint), constraint.param)


def _gguf_formatter(llm: Any) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ConfigError("chat_template = 'gguf', but the model file has no chat template")
    return Jinja2ChatFormatter(
        template=template,
        eos_token=llm.detokenize([llm.token_eos()]).decode(errors="replace"),
        bos_token=llm.detokenize([llm.token_bos()]).decode(errors="replace"),
    )


def create(model: ModelConfig) -> LlamaCppBackend:
    return LlamaCppBackend(model, Options.model_validate(model.options), Settings())
