"""The backend contract: what a worker needs from an inference engine.

A backend serves one model. ``generate`` yields :class:`Delta` objects, text in order, the last
one carrying ``finish_reason`` and ``usage``; the worker cancels the iterating task to abort a
job, and the backend must stop the engine within one token. A blocking engine runs in a thread
(see :class:`ThreadedGeneration`) and never blocks the event loop. ``tokenize`` and
``detokenize`` answer ``/tokenize`` and ``/detokenize`` with the engine's own tokenizer: a chat
is tokenized as the engine is given it (its chat template rendered), so a tokenize count is the
``prompt_tokens`` of the same generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict

from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import ContextLengthExceeded, InvalidRequest, UnsupportedCapability
from llmspool.shared.messages import Job
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    ChatMessage,
    CompletionRequest,
    FinishReason,
    ToolCallDelta,
    Usage,
)
from llmspool.shared.tokens import TokenizeRequest


class BackendOptions(BaseModel):
    """Base of every backend's options: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(slots=True)
class Delta:
    """A piece of a generation: new text, and at the end the finish reason and usage."""

    text: str = ""
    tokens: int = 0
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    #: The logprobs of this delta's tokens, when the job asked for them.
    logprobs: list[ChatCompletionTokenLogprob] | None = None
    #: Pieces of tool calls (see :mod:`llmspool.consumers.tools`).
    tool_calls: list[ToolCallDelta] | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """The generation parameters of a job, resolved against the model's defaults. What a
    backend honours is in shared/capabilities.py; the request check refused the rest."""

    #: None: up to the rest of the context (see :func:`generation_budget`).
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: Alternatives to report per token; None: no logprobs.
    logprobs: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    #: (token id, bias) pairs.
    logit_bias: tuple[tuple[int, float], ...] = ()
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prompt:
    """What to generate from: chat messages, or a raw completion prompt."""

    messages: tuple[ChatMessage, ...] = ()
    text: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.text is None


@dataclass(frozen=True, slots=True)
class Tokenization:
    """What a tokenize job asks for: a prompt or messages, and how to tokenize them."""

    prompt: Prompt
    #: The tokenizer's own special tokens (BOS…) on top of what a chat template renders.
    add_special_tokens: bool
    #: Chat only: end the conversation with the start of an assistant turn.
    add_generation_prompt: bool = True


class Backend(Protocol):
    """One engine serving one model."""

    max_concurrency: int
    #: The context length in tokens, as the engine says once started (None: unknown).
    max_model_len: int | None

    async def start(self) -> None: ...

    def generate(self, job: Job) -> AsyncIterator[Delta]: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...

    async def tokenize(self, request: Tokenization) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    async def stop(self) -> None: ...


def sampling_params(job: Job, model: ModelConfig) -> SamplingParams:
    """Resolve a generation job's parameters against ``model``'s defaults."""
    body = job.body
    if not isinstance(body, ChatCompletionRequest | CompletionRequest):
        raise TypeError(f"job {job.request_id} is not a generation request")
    stop = body.stop
    return SamplingParams(
        max_tokens=body.requested_max_tokens() or model.default_max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=body.top_logprobs_wanted(),
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        min_tokens=body.min_tokens or 0,
        ignore_eos=bool(body.ignore_eos),
        stop_token_ids=tuple(body.stop_token_ids or ()),
        logit_bias=_logit_bias(body.logit_bias),
        chat_template_kwargs=getattr(body, "chat_template_kwargs", None) or {},
    )


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    try:
        return tuple((int(token), value) for token, value in (bias or {}).items())
    except ValueError:
        raise InvalidRequest(
            "logit_bias keys must be token ids.", param="logit_bias", code="invalid_value"
        ) from None


def generation_budget(params: SamplingParams, prompt_tokens: int, context: int, chat: bool) -> int:
    """Tokens the job may generate in a context of ``context`` tokens: ``max_tokens``, or all
    the room the prompt leaves. A prompt (with the tokens asked for) that does not fit is a
    :class:`~llmspool.shared.errors.ContextLengthExceeded`: the request's fault, never retried."""
    room = context - prompt_tokens
    if room <= 0:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens; the prompt is "
            f"{prompt_tokens} tokens.",
            param="messages" if chat else "prompt",
        )
    if params.max_tokens is None:
        return room
    if params.max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens; you requested "
            f"{prompt_tokens + params.max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{params.max_tokens} for the completion).",
            param="max_tokens",
        )
    return params.max_tokens


def prompt_of(job: Job) -> Prompt:
    body = job.body
    if isinstance(body, ChatCompletionRequest):
        return Prompt(messages=tuple(body.messages))
    if isinstance(body, CompletionRequest):
        return Prompt(text=body.prompt_text())
    raise TypeError(f"job {job.request_id} is not a generation request")


def tokenization_of(job: Job) -> Tokenization:
    """What a tokenize job asks the engine to tokenize."""
    body = job.body
    if not isinstance(body, TokenizeRequest):
        raise TypeError(f"job {job.request_id} is not a tokenize request")
    prompt = Prompt(text=body.prompt) if body.messages is None else Prompt(tuple(body.messages))
    return Tokenization(prompt, body.special_tokens(), body.add_generation_prompt)


def check_token_ids(tokens: list[int], vocabulary: int) -> None:
    """Refuse token ids the engine's vocabulary does not have (an engine may crash on them)."""
    bad = [token for token in tokens if not 0 <= token < vocabulary]
    if bad:
        raise InvalidRequest(
            f"token id {bad[0]} is not in this model's vocabulary (0 to {vocabulary - 1})",
            param="tokens",
            code="invalid_token_id",
        )


class NoEmbeddings:
    """Mixin for backends whose engine cannot embed."""

    async def embed(self, texts: list[str]) -> list[list[float]]:
        raise UnsupportedCapability("this model's backend does not serve embeddings")


@dataclass(slots=True)
class StopMatcher:
    """Finds stop sequences in streamed text, holding back any tail that could start one."""

    stops: tuple[str, ...]
    _held: str = ""
    matched: bool = field(default=False, init=False)

    def feed(self, text: str) -> str:
        """Take new text; return what can be released now (nothing after a matched stop)."""
        if not self.stops:
            return text
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.matched, self._held = True, ""
            return buffer[:cut]
        keep = self._longest_partial(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Release whatever is held back once generation ends without a match."""
        held, self._held = self._held, ""
        return held

    def _longest_partial(self, buffer: str) -> int:
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest


_DONE = object()


class ThreadedGeneration:
    """Runs a blocking token iterator in a thread and hands its items to the event loop.

    The thread checks a stop flag between items, so cancelling the consuming task (or leaving
    the ``async for``) stops the engine within one token.
    """

    def __init__(self, produce: Callable[[threading.Event], Iterator[Delta]]) -> None:
        self._produce = produce
        self._stop = threading.Event()

    async def __aiter__(self) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        worker = loop.run_in_executor(None, self._run, loop, queue)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield cast(Delta, item)
        finally:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)

    def _run(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[object]) -> None:
        try:
            for delta in self._produce(self._stop):
                loop.call_soon_threadsafe(queue.put_nowait, delta)
                if self._stop.is_set():
                    break
        except BaseException as exc:  # handed to the loop and re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)
