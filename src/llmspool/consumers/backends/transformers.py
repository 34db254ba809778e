"""The ``transformers`` backend: a Hugging Face causal LM on PyTorch, CPU by default.

By default concurrent jobs are decoded together: one thread owns the model and runs every
job's steps in one batch (:mod:`~llmspool.consumers.backends.decoder`); a job's tokens reach
its event loop as they come. With ``batching = false`` (or a model whose cache the loop cannot
pad) each job runs ``model.generate`` in its own thread with a ``TextIteratorStreamer``, read
through :class:`ThreadedGeneration`; a stopping criterion ends it when the job is cancelled or a
stop sequence matched. Chat prompts are rendered with the tokenizer's own chat template.
Embeddings are the mean of the last hidden states over the text's tokens, L2-normalised.

Only local files are read (``local_files_only``): a hub name works when it is already in the
Hugging Face cache, and nothing is ever downloaded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field

from llmspool.consumers import tools
from llmspool.consumers.backends import hf_tokens
from llmspool.consumers.backends.base import (
    BackendOptions,
    Delta,
    Prompt,
    SamplingParams,
    StopMatcher,
    ThreadedGeneration,
    Tokenization,
    generation_budget,
    prompt_of,
    sampling_params,
)
from llmspool.consumers.backends.decoder import BatchDecoder, Emit, Sequence, batchable
from llmspool.consumers.backends.sampler import RowSampler
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    ConfigError,
    EngineError,
    InvalidRequest,
    UnsupportedCapability,
    UnsupportedParameter,
)
from llmspool.shared.messages import Job
from llmspool.shared.protocol import ChatCompletionTokenLogprob, FinishReason, TopLogprob, Usage

MISSING = "the transformers backend needs PyTorch and transformers: pip install 'llmspool[torch]'"
_T = TypeVar("_T")
_STREAM_TIMEOUT = 600.0  # seconds the streamer waits for the next token before giving up
log = logging.getLogger(__name__)


class Options(BackendOptions):
    model: str = Field(
        description="Model directory (or a name already in the local Hugging Face cache)."
    )
    device: str = Field(default="cpu", description="Torch device: cpu, cuda, cuda:1, mps, …")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights' dtype; auto: as saved."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the model's own Python code to run."
    )
    batching: bool = Field(
        default=True,
        description="Decode concurrent jobs together in one batch; false: one "
        "model.generate thread per job.",
    )


class TransformersBackend:
    """One transformers model in this process; up to ``max_concurrency`` generations at once."""

    def __init__(self, model: ModelConfig, options: Options) -> None:
        self.model = model
        self.options = options
        self.max_concurrency = model.max_concurrency
        self._lm: Any = None
        self._tokenizer: Any = None
        self.decoder: BatchDecoder | None = None
        # The Rust tokenizer refuses concurrent calls that change its settings.
        self._tokenizer_lock = threading.Lock()
        self._seed_lock = threading.Lock()
        self.max_model_len: int | None = None
        #: generation thread id -> where its logits go (jobs that asked for logprobs)
        self._recorders: dict[int, _Logprobs] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        if self.options.batching and batchable(self._lm):
            self.decoder = BatchDecoder(self._lm, self._text_of)
            self.decoder.start()
        elif self.options.batching:
            log.warning(
                "model %s: its cache has sliding-window layers; not batched", self.model.name
            )

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ConfigError(MISSING) from exc
        source = self._source()
        common: dict[str, Any] = {
            "local_files_only": True,
            "trust_remote_code": self.options.trust_remote_code,
        }
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **common)
            dtype = self.options.dtype
            lm: Any = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype if dtype == "auto" else getattr(torch, dtype), **common
            )
        except OSError as exc:
            raise ConfigError(f"model {self.model.name}: cannot load '{source}': {exc}") from exc
        self._lm = lm.to(self.options.device).eval()
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.max_model_len = int(self._lm.config.max_position_embeddings)
        self._lm.get_output_embeddings().register_forward_hook(self._record_logits)

    def _record_logits(self, module: Any, inputs: Any, output: Any) -> None:
        """The output layer's hook: hands each step's logits to the job that runs in this
        thread, when it asked for logprobs (the raw model distribution, as vLLM reports)."""
        recorder = self._recorders.get(threading.get_ident())
        if recorder is not None:
            recorder.logits = output[0, -1]

    def _source(self) -> str:
        path = Path(self.options.model).expanduser()
        if path.exists() or self.options.model.startswith(("/", ".", "~")):
            if not path.is_dir():
                raise ConfigError(f"model {self.model.name}: no model directory at {path}")
            return str(path)
        return self.options.model

    async def stop(self) -> None:
        if self.decoder is not None:
            await asyncio.to_thread(self.decoder.stop)
            self.decoder = None
        self._lm = self._tokenizer = None

    def _eos_ids(self) -> set[int]:
        return _ends(self._lm.generation_config.eos_token_id, None)

    def _text_of(self, tokens: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self._tokenizer.decode(tokens, skip_special_tokens=True))

    # ------------------------------------------------------------------ generation

    def generate(self, job: Job) -> AsyncIterator[Delta]:
        params = sampling_params(job, self.model)
        plan = tools.plan_of(job)
        if plan.constraint is not None:  # the API refuses these for this backend
            raise UnsupportedParameter(
                f"'{plan.constraint.param}' is not supported by the transformers backend.",
                param=plan.constraint.param,
            )
        prompt = tools.plain_prompt(prompt_of(job), plan)
        if self.decoder is not None:
            return tools.shaped(plan, self._batched(job.request_id, prompt, params))
        generation = ThreadedGeneration(lambda stop: self._produce(prompt, params, stop))
        return tools.shaped(plan, generation.__aiter__())

    async def _batched(
        self, request_id: str, prompt: Prompt, params: SamplingParams
    ) -> AsyncIterator[Delta]:
        """The job's deltas from the decode loop; leaving early cancels it there."""
        inbox: asyncio.Queue[object] = asyncio.Queue()
        emit = _emitter(inbox)
        sequence = await asyncio.to_thread(self._sequence, request_id, prompt, params, emit)
        decoder = self.decoder
        if decoder is None:
            raise EngineError("the transformers backend is not started")
        decoder.submit(sequence)
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                if not isinstance(item, Delta):
                    raise EngineError(f"the decode loop sent {item!r}")
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            sequence.cancelled = True  # the loop drops it before its next step

    def _sequence(
        self, request_id: str, prompt: Prompt, params: SamplingParams, emit: Emit
    ) -> Sequence:
        """The job as the decode loop runs it: its prompt's ids, budget, end tokens, sampler
        and logprobs. What the request cannot have is refused here, before it is queued."""
        inputs = self.encode(prompt, dict(params.chat_template_kwargs))
        ids: list[int] = inputs["input_ids"][0].tolist()
        context = int(self._lm.config.max_position_embeddings)
        limit = generation_budget(params, len(ids), context, prompt.is_chat)
        ends = _ends(self._lm.generation_config.eos_token_id, params)
        try:  # ends or, with ignore_eos, the model's: what min_tokens keeps out
            sampler = RowSampler(params, self._lm.device, len(ids), limit, ends or self._eos_ids())
        except ValueError as exc:
            raise InvalidRequest(f"transformers refused the request: {exc}") from exc
        recorder = None
        if params.logprobs is not None:
            recorder = _Logprobs(self._tokenizer, params.logprobs)
        sequence = Sequence(request_id, ids, params, limit, emit, sampler, frozenset(ends))
        sequence.recorder = recorder
        return sequence

    def encode(self, prompt: Prompt, template_kwargs: dict[str, Any] | None = None) -> Any:
        """The prompt as model inputs (``input_ids``, ``attention_mask``) on the device."""
        tokenizer = self._require_tokenizer()
        with self._tokenizer_lock:
            if prompt.text is not None:
                inputs = tokenizer(prompt.text, return_tensors="pt")
            elif tokenizer.chat_template is None:
                raise UnsupportedCapability(
                    f"the model '{self.model.name}' has no chat template; use /v1/completions"
                )
            else:
                inputs = tokenizer.apply_chat_template(
                    [m.model_dump(include={"role", "content"}) for m in prompt.messages],
                    add_generation_prompt=True,
                    return_dict=True,
                    return_tensors="pt",
                    **(template_kwargs or {}),
                )
        return inputs.to(self.options.device)

    def _produce(
        self, prompt: Prompt, params: SamplingParams, stop: threading.Event
    ) -> Iterator[Delta]:
        inputs = self.encode(prompt, dict(params.chat_template_kwargs))
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        context = int(self._lm.config.max_position_embeddings)
        limit = generation_budget(params, prompt_tokens, context, prompt.is_chat)
        run = _Run(self, inputs, params, limit, stop)
        yield from run.deltas(prompt_tokens)

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None or self._lm is None:
            raise EngineError("the transformers backend is not started")
        return self._tokenizer

    # ------------------------------------------------------------------ tokenizer

    async def tokenize(self, request: Tokenization) -> list[int]:
        tokenizer = self._require_tokenizer()
        name = self.model.name
        return await asyncio.to_thread(self._locked, hf_tokens.tokenize, tokenizer, request, name)

    async def detokenize(self, tokens: list[int]) -> str:
        tokenizer = self._require_tokenizer()
        return await asyncio.to_thread(self._locked, hf_tokens.detokenize, tokenizer, tokens)

    def _locked(self, call: Callable[..., _T], *args: Any) -> _T:
        with self._tokenizer_lock:
            return call(*args)

    # ------------------------------------------------------------------ embeddings

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled last hidden states, L2-normalised, one vector per text."""
        self._require_tokenizer()
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        import torch

        with self._tokenizer_lock:
            batch = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self._lm.config.max_position_embeddings,
                return_tensors="pt",
            ).to(self.options.device)
        with torch.inference_mode():
            out = self._lm(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).to(out.hidden_states[-1].dtype)
        pooled = (out.hidden_states[-1] * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        result: list[list[float]] = vectors.cpu().tolist()
        return result


class _Run:
    """One generation: ``model.generate`` in a thread, its text read from a streamer."""

    def __init__(
        self,
        backend: TransformersBackend,
        inputs: Any,
        params: SamplingParams,
        limit: int,
        stop: threading.Event,
    ) -> None:
        from transformers import StoppingCriteriaList

        self.backend = backend
        self.params = params
        self.limit = limit
        self.halt = stop  # set by a cancel, or by us when a stop sequence matched
        self.ends = _ends(backend._lm.generation_config.eos_token_id, params)
        self.recorder = (
            None if params.logprobs is None else _Logprobs(backend._tokenizer, params.logprobs)
        )
        self.criterion = _Halt(stop, int(inputs["input_ids"].shape[-1]), self.recorder, self.ends)
        self.streamer: Any = token_streamer(backend._tokenizer)
        self.kwargs = {
            **inputs,
            **generation_kwargs(params, limit),
            "streamer": self.streamer,
            "stopping_criteria": StoppingCriteriaList([self.criterion]),
        }
        if params.stop_token_ids and not params.ignore_eos:
            self.kwargs["eos_token_id"] = sorted(self.ends)
        self.error: BaseException | None = None

    def deltas(self, prompt_tokens: int) -> Iterator[Delta]:
        thread = threading.Thread(target=self._generate, daemon=True)
        thread.start()
        matcher = StopMatcher(self.params.stop)
        try:
            for piece in self.streamer:
                text = matcher.feed(piece)
                logprobs = self._take_logprobs()
                if text or logprobs:
                    yield Delta(text=text, tokens=self.criterion.take_new(), logprobs=logprobs)
                if matcher.matched:
                    self.halt.set()
                    break
        finally:
            self.halt.set()  # also reached when the consumer stops iterating (a cancel)
            thread.join()
        if isinstance(self.error, ValueError):  # generate() refusing what the request asked
            raise InvalidRequest(f"transformers refused the request: {self.error}") from self.error
        if self.error is not None:
            raise self.error
        tail = "" if matcher.matched else matcher.flush()
        finish: FinishReason = "stop" if matcher.matched or self._ended_on_eos() else "length"
        completion = self.criterion.generated - (1 if self._ended_on_eos() else 0)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
        )
        logprobs = None if matcher.matched else self._take_logprobs()
        yield Delta(text=tail, finish_reason=finish, usage=usage, logprobs=logprobs)

    def _take_logprobs(self) -> list[ChatCompletionTokenLogprob] | None:
        return self.recorder.take() if self.recorder is not None else None

    def _generate(self) -> None:
        if self.recorder is None:
            self._generate_seeded()
            return
        recorders = self.backend._recorders
        recorders[threading.get_ident()] = self.recorder
        try:
            self._generate_seeded()
        finally:
            recorders.pop(threading.get_ident(), None)

    def _generate_seeded(self) -> None:
        import torch

        try:
            if self.params.seed is None:
                self.backend._lm.generate(**self.kwargs)
                return
            # torch's CPU generator is process-wide: a seed is exact only while no other
            # sampled job runs in this worker (documented in docs/backends.md).
            with self.backend._seed_lock:
                torch.manual_seed(self.params.seed)
                self.backend._lm.generate(**self.kwargs)
        except BaseException as exc:  # re-raised in the consuming thread
            self.error = exc
            self.streamer.end()

    def _ended_on_eos(self) -> bool:
        return self.criterion.last_token in self.ends


def _emitter(inbox: asyncio.Queue[object]) -> Callable[[object], None]:
    """A thread-safe hand-off of the decode loop's items to ``inbox``'s event loop."""
    loop = asyncio.get_running_loop()

    def emit(item: object) -> None:
        # A closed loop means nobody reads this job any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(inbox.put_nowait, item)

    return emit


def token_streamer(tokenizer: Any) -> Any:
    """A ``TextIteratorStreamer`` that releases text at every token, not at word ends.

    The stock streamer holds text back until a space, so a reply without spaces would arrive in
    one piece; this one holds back only an incomplete UTF-8 character.
    """
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):  # type: ignore[misc, unused-ignore]
        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
            if text.endswith("\ufffd"):
                return  # the rest of the character comes with the next token
            printable, self.print_len = text[self.print_len :], len(text)
            if printable:
                self.on_finalized_text(printable)

    return TokenStreamer(
        tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=_STREAM_TIMEOUT
    )


def _ends(eos: Any, params: SamplingParams | None) -> set[int]:
    """The token ids that end a generation: the model's end tokens and ``stop_token_ids``
    (``params`` None: the model's alone)."""
    if params is not None and params.ignore_eos:
        return set()
    ids = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
    return ids | set(params.stop_token_ids if params is not None else ())


class _Logprobs:
    """The logprobs of one generation's tokens, made from the logits the output layer's hook
    hands over (generation thread) and taken by the streaming thread."""

    def __init__(self, tokenizer: Any, top: int) -> None:
        self.tokenizer = tokenizer
        self.top = top
        self.logits: Any = None
        self._ready: collections.deque[ChatCompletionTokenLogprob] = collections.deque()

    def add(self, token: int) -> None:
        import torch

        if self.logits is None:
            return
        logprobs = torch.log_softmax(self.logits.float(), dim=-1)
        best = torch.topk(logprobs, self.top) if self.top else None
        alternatives = (
            []
            if best is None
            else list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        )
        self._ready.append(
            ChatCompletionTokenLogprob(
                token=self._text(token),
                logprob=float(logprobs[token]),
                bytes=list(self._text(token).encode()),
                top_logprobs=[
                    TopLogprob(token=self._text(i), logprob=v, bytes=list(self._text(i).encode()))
                    for i, v in alternatives
                ],
            )
        )

    def _text(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    def take(self) -> list[ChatCompletionTokenLogprob] | None:
        taken = []
        while self._ready:
            taken.append(self._ready.popleft())
        return taken or None


class _Halt:
    """A stopping criterion: ends generation when ``halt`` is set; counts generated tokens
    (and has their logprobs made, where asked)."""

    def __init__(
        self,
        halt: threading.Event,
        prompt_tokens: int,
        recorder: _Logprobs | None = None,
        ends: set[int] | None = None,
    ) -> None:
        self.halt = halt
        self.prompt_tokens = prompt_tokens
        self.recorder = recorder
        self.ends = ends or set()
        self.generated = 0
        self.last_token: int | None = None
        self._reported = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.generated = int(input_ids.shape[-1]) - self.prompt_tokens
        self.last_token = int(input_ids[0, -1])
        if self.recorder is not None and self.last_token not in self.ends:
            self.recorder.add(self.last_token)
        done = self.halt.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def take_new(self) -> int:
        """Tokens generated since the last call (the streamer's text lags them slightly)."""
        new, self._reported = self.generated - self._reported, self.generated
        return max(new, 0)


def generation_kwargs(params: SamplingParams, limit: int) -> dict[str, Any]:
    """``model.generate`` arguments for ``params``: greedy at temperature 0, else sampling."""
    kwargs: dict[str, Any] = {"max_new_tokens": limit, "do_sample": params.temperature > 0}
    if params.temperature > 0:
        kwargs |= {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k and params.top_k > 0 else 0,
        }
        if params.min_p:
            kwargs["min_p"] = params.min_p
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    if params.min_tokens or params.ignore_eos:  # the end tokens kept out until then
        kwargs["min_new_tokens"] = limit if params.ignore_eos else min(params.min_tokens, limit)
    return kwargs


def create(model: ModelConfig) -> TransformersBackend:
    return TransformersBackend(model, Options.model_validate(model.options))
