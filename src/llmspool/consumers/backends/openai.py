"""The ``openai`` backend: forwards jobs to an upstream OpenAI-compatible server.

The upstream may be a vLLM or llama.cpp server, or a hosted API. Generations are streamed
through as they arrive; tools, ``tool_choice``, the legacy ``functions``,
``response_format`` and vLLM's ``structured_outputs``/``guided_*`` go upstream unchanged,
and the upstream's tool calls come back as they streamed; usage is the upstream's own
(``stream_options.include_usage``), or, where the upstream sends none, one token per streamed
piece and no prompt count. The upstream's
errors become llmspool errors with the upstream's message (:func:`upstream_error`). A cancelled
job closes its upstream stream. The upstream key is read from an environment variable, never
from the models file.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, cast

from pydantic import Field

from llmspool.consumers.backends.base import (
    BackendOptions,
    Delta,
    Prompt,
    SamplingParams,
    Tokenization,
    prompt_of,
    sampling_params,
)
from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import (
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    LLMSpoolError,
    ServiceUnavailable,
    UnsupportedCapability,
)
from llmspool.shared.messages import Job
from llmspool.shared.protocol import (
    ChatCompletionTokenLogprob,
    FinishReason,
    FunctionCallDelta,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

MISSING = "the openai backend needs the openai client: pip install 'llmspool[openai]'"


class Options(BackendOptions):
    base_url: str = Field(description="The upstream's API root, e.g. http://host:8000/v1.")
    model: str | None = Field(
        default=None, description="The upstream's name of the model; unset: this model's name."
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable that holds the upstream's API key."
    )
    timeout: float = Field(default=600.0, gt=0, description="Seconds per upstream request.")
    max_retries: int = Field(
        default=1,
        ge=0,
        description="Client retries of a failed upstream request (connection errors, 429, 5xx) "
        "before anything streamed.",
    )
    check_model: bool = Field(
        default=True, description="At start, check that the upstream lists the model."
    )


class OpenAIBackend:
    """Jobs forwarded to one upstream model; up to ``max_concurrency`` at once."""

    def __init__(self, model: ModelConfig, options: Options) -> None:
        self.model = model
        self.options = options
        self.max_concurrency = model.max_concurrency
        self.upstream_model = options.model or model.name
        self._client: Any = None
        #: The upstream's context length, where its model list says (vLLM's does).
        self.max_model_len: int | None = None

    async def start(self) -> None:
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:
            raise ConfigError(MISSING) from exc
        client = AsyncOpenAI(
            base_url=self.options.base_url,
            api_key=self._api_key(),
            timeout=self.options.timeout,
            max_retries=self.options.max_retries,
        )
        if self.options.check_model:
            await self._check(client)
        self._client = client

    def _api_key(self) -> str:
        name = self.options.api_key_env
        if name is None:
            return "none"
        key = os.environ.get(name)
        if not key:
            raise ConfigError(f"model {self.model.name}: the environment variable {name} is unset")
        return key

    async def _check(self, client: Any) -> None:
        try:
            cards = [m async for m in client.models.list()]
        except Exception as exc:
            await client.close()
            error = upstream_error(exc)
            raise ConfigError(f"model {self.model.name}: {error.message}") from exc
        listed = [card.id for card in cards]
        for card in cards:
            if card.id == self.upstream_model:
                self.max_model_len = _length(card)
        if self.upstream_model not in listed:
            await client.close()
            raise ConfigError(
                f"model {self.model.name}: the upstream {self.options.base_url} does not serve "
                f"'{self.upstream_model}' (it serves: {', '.join(listed) or 'nothing'})"
            )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def generate(self, job: Job) -> AsyncIterator[Delta]:
        passed = passed_through(job.body)
        return self._generate(prompt_of(job), sampling_params(job, self.model), passed)

    async def _generate(
        self, prompt: Prompt, params: SamplingParams, passed: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        if self._client is None:
            raise EngineError("the openai backend is not started")
        reader = ChunkReader(chat=prompt.is_chat)
        try:
            stream = await self._open(prompt, params, passed)
        except Exception as exc:
            raise upstream_error(exc) from exc
        try:
            async for chunk in stream:
                delta = reader.read(chunk)
                if delta is not None:
                    yield delta
        except Exception as exc:
            raise upstream_error(exc) from exc
        finally:
            await stream.close()  # on a cancel this drops the upstream connection
        yield reader.final()

    async def _open(self, prompt: Prompt, params: SamplingParams, passed: dict[str, Any]) -> Any:
        args = request_args(params, prompt.is_chat) | {"model": self.upstream_model, "stream": True}
        args["stream_options"] = {"include_usage": True}
        if passed:
            args["extra_body"] = passed
        if prompt.text is not None:
            return await self._client.completions.create(prompt=prompt.text, **args)
        messages = [m.model_dump(exclude_none=True) for m in prompt.messages]
        return await self._client.chat.completions.create(messages=messages, **args)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if self._client is None:
            raise EngineError("the openai backend is not started")
        try:
            result = await self._client.embeddings.create(model=self.upstream_model, input=texts)
        except Exception as exc:
            raise upstream_error(exc) from exc
        ordered = sorted(result.data, key=lambda d: d.index)
        return [list(d.embedding) for d in ordered]

    async def tokenize(self, request: Tokenization) -> list[int]:
        body: dict[str, Any] = {"add_special_tokens": request.add_special_tokens}
        prompt = request.prompt
        if prompt.text is not None:
            body["prompt"] = prompt.text
        else:
            body["messages"] = [m.model_dump(exclude_none=True) for m in prompt.messages]
            body["add_generation_prompt"] = request.add_generation_prompt
        answer = await self._forward("tokenize", body)
        return [int(token) for token in answer["tokens"]]

    async def detokenize(self, tokens: list[int]) -> str:
        answer = await self._forward("detokenize", {"tokens": tokens})
        return str(answer["prompt"])

    async def _forward(self, route: str, body: dict[str, Any]) -> Any:
        """POST to the upstream's vLLM-style ``/tokenize`` or ``/detokenize`` (at its root,
        beside ``/v1``)."""
        import openai

        if self._client is None:
            raise EngineError("the openai backend is not started")
        root = self._client.with_options(base_url=upstream_root(self.options.base_url))
        try:
            body = {"model": self.upstream_model, **body}
            return await root.post(f"/{route}", body=body, cast_to=dict)
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405):
                raise UnsupportedCapability(
                    f"the upstream server {self.options.base_url} has no /{route} route "
                    f"(HTTP {exc.status_code}); only vLLM-compatible servers serve it",
                    param="model",
                ) from exc
            raise upstream_error(exc) from exc
        except Exception as exc:
            raise upstream_error(exc) from exc


def upstream_root(base_url: str) -> str:
    """The upstream's root URL: its API root without the ``/v1`` suffix."""
    return base_url.rstrip("/").removesuffix("/v1")


def request_args(params: SamplingParams, chat: bool = True) -> dict[str, Any]:
    """The OpenAI request parameters for a job's sampling parameters."""
    args: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }
    if params.max_tokens is not None:  # else the upstream's own default (its context)
        args["max_tokens"] = params.max_tokens
    if params.stop:
        args["stop"] = list(params.stop)
    if params.seed is not None:
        args["seed"] = params.seed
    if params.logit_bias:
        args["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if params.logprobs is not None:
        chat_logprobs = {"logprobs": True, "top_logprobs": params.logprobs}
        args |= chat_logprobs if chat else {"logprobs": params.logprobs}
    return args


#: Request fields forwarded to the upstream as they are, when set: vLLM's extensions and the
#: OpenAI fields only the upstream can honour (see shared/capabilities.py).
PASSED = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "chat_template_kwargs",
    "reasoning_effort",
    "service_tier",
    "store",
    "prediction",
)


#: Tool and structured-output fields, forwarded as the request wrote them (JSON).
PASSED_OUTPUTS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


def passed_through(body: Any) -> dict[str, Any]:
    """What ``body`` asks of the upstream beyond the sampling parameters: the fields of
    :data:`PASSED` and :data:`PASSED_OUTPUTS` that are set, and every field llmspool does
    not know."""
    fields = {name: getattr(body, name, None) for name in PASSED}
    given = {name: value for name, value in fields.items() if value is not None}
    outputs = set(PASSED_OUTPUTS) & set(type(body).model_fields)
    given |= body.model_dump(include=outputs, exclude_none=True, by_alias=True)
    return given | dict(body.model_extra or {})


class ChunkReader:
    """Turns streamed upstream chunks into deltas; keeps the finish reason and usage."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.pieces = 0
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        #: each call's id and name as first streamed (index -> (id, name))
        self.calls: dict[int, tuple[str | None, str | None]] = {}

    def read(self, chunk: Any) -> Delta | None:
        if getattr(chunk, "usage", None) is not None:
            self.usage = Usage(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
                total_tokens=chunk.usage.total_tokens,
            )
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        if choice.finish_reason is not None:
            self.finish_reason = _finish_reason(choice.finish_reason)
        text = (choice.delta.content if self.chat else choice.text) or ""
        logprobs = chunk_logprobs(getattr(choice, "logprobs", None), self.chat)
        calls = self._calls(_tool_calls(choice.delta)) if self.chat else None
        if not text and not logprobs and not calls:
            return None
        self.pieces += 1
        return Delta(text=text, tokens=1, logprobs=logprobs, tool_calls=calls)

    def _calls(self, pieces: list[ToolCallDelta] | None) -> list[ToolCallDelta] | None:
        """The pieces without a repeat of their call's id, type and name: some servers
        (llama-cpp-python's) send them with every fragment, and OpenAI's clients would join
        the repeats into one long name."""
        if not pieces:
            return None
        return [self._first_only(piece) for piece in pieces]

    def _first_only(self, piece: ToolCallDelta) -> ToolCallDelta:
        name = piece.function.name if piece.function is not None else None
        seen = self.calls.get(piece.index)
        if seen is None:
            self.calls[piece.index] = (piece.id, name)
            return piece
        update: dict[str, object] = {}
        if piece.id is not None and piece.id == seen[0]:
            update |= {"id": None, "type": None}
        if piece.function is not None and name is not None and name == seen[1]:
            update["function"] = piece.function.model_copy(update={"name": None})
        return piece.model_copy(update=update) if update else piece

    def final(self) -> Delta:
        if self.finish_reason is None and self.pieces == 0 and self.usage is None:
            # llama.cpp's server answers a prompt over its context with 200 and nothing more
            raise ContextLengthExceeded(
                "the upstream ended its stream without a reply: the prompt is likely longer "
                "than its context"
            )
        if self.finish_reason is None:
            raise EngineError("the upstream stream ended without a finish reason")
        usage = self.usage or Usage(completion_tokens=self.pieces, total_tokens=self.pieces)
        return Delta(finish_reason=self.finish_reason, usage=usage)


def chunk_logprobs(logprobs: Any, chat: bool) -> list[ChatCompletionTokenLogprob] | None:
    """An upstream chunk's logprobs (chat's or the completions shape) as llmspool's."""
    if logprobs is None:
        return None
    if chat:
        content = getattr(logprobs, "content", None) or []
        return [ChatCompletionTokenLogprob.model_validate(t.model_dump()) for t in content] or None
    tokens = getattr(logprobs, "tokens", None) or []
    values = getattr(logprobs, "token_logprobs", None) or []
    tops = getattr(logprobs, "top_logprobs", None) or [None] * len(tokens)
    return [
        ChatCompletionTokenLogprob(
            token=token,
            logprob=value if value is not None else float("-inf"),
            bytes=list(token.encode()),
            top_logprobs=[TopLogprob(token=t, logprob=v) for t, v in (top or {}).items()],
        )
        for token, value, top in zip(tokens, values, tops, strict=False)
    ] or None


def _finish_reason(reason: str) -> FinishReason:
    if reason in ("length", "tool_calls", "function_call"):
        return cast(FinishReason, reason)
    return "stop"


def _tool_calls(delta: Any) -> list[ToolCallDelta] | None:
    """The upstream's tool-call pieces as they streamed (a legacy ``function_call`` piece as
    the piece of call 0)."""
    calls = getattr(delta, "tool_calls", None)
    if calls:
        return [ToolCallDelta.model_validate(c.model_dump(exclude_none=True)) for c in calls]
    legacy = getattr(delta, "function_call", None)
    if legacy is not None:
        function = FunctionCallDelta.model_validate(legacy.model_dump(exclude_none=True))
        return [ToolCallDelta(index=0, function=function)]
    return None


def upstream_error(exc: BaseException) -> LLMSpoolError:
    """An upstream failure as the llmspool error a client should see."""
    import openai

    if isinstance(exc, LLMSpoolError):
        return exc
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return ServiceUnavailable(f"the upstream server is unreachable: {exc}")
    if not isinstance(exc, openai.APIStatusError):
        return EngineError(f"the upstream stream failed: {exc}")
    status, message = exc.status_code, f"upstream error {exc.status_code}: {exc.message}"
    if status in (400, 413, 422):
        if _too_long(exc):
            return ContextLengthExceeded(message, param=_param(exc))
        return InvalidRequest(message, param=_param(exc), code="upstream_invalid_request")
    if status in (401, 403):
        return EngineError(message, code="upstream_auth")
    if status == 404:
        return EngineError(message, code="upstream_not_found")
    if status == 429:
        return ServiceUnavailable(message, code="upstream_rate_limited")
    return EngineError(message, code="upstream_error")


def _too_long(exc: Any) -> bool:
    """Whether the upstream said the prompt does not fit its context (OpenAI's code, or the
    words vLLM's and llama.cpp's servers use)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = body.get("error", body)
    code = detail.get("code") if isinstance(detail, dict) else None
    text = str(exc.message).lower()
    return code == "context_length_exceeded" or "context length" in text or "context window" in text


def _param(exc: Any) -> str | None:
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = body.get("error", body)
    param = detail.get("param") if isinstance(detail, dict) else None
    return param if isinstance(param, str) else None


def _length(card: Any) -> int | None:
    """A model card's context length, where the upstream says it (vLLM's ``max_model_len``)."""
    extra = getattr(card, "model_extra", None) or {}
    length = extra.get("max_model_len")
    return length if isinstance(length, int) and length > 0 else None


def create(model: ModelConfig) -> OpenAIBackend:
    return OpenAIBackend(model, Options.model_validate(model.options))
