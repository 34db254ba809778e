"""The ``fake`` engine: deterministic text at a configured pace, for tests and benchmarks.

It emits exactly ``max_tokens`` tokens unless a stop sequence matches (without ``max_tokens``,
up to its ``max_model_len`` less the prompt's words), or ``eos_after`` tokens came first (then
it ends with ``stop``, as a model ending its answer); logprobs, when asked for, are made up
deterministically (:func:`fake_logprob`). Token ``i`` (from 0)
leaves at ``start + ttft_ms + i * itl_ms``, where ``start`` is when the job began, so its pace
does not drift under load. The same prompt always gives the same text; a ``seed`` changes it.

Fault injection (tests, benchmarks and the chaos run only): with the option ``faults = true``
a prompt may carry markers that make the engine misbehave deterministically:

- ``[[fake:exit@N]]``  the worker process exits at once (``os._exit``, like ``kill -9``)
  just before token ``N`` (0: before the first token);
- ``[[fake:raise@N]]`` the generation raises an exception just before token ``N``;
- a suffix ``xK`` (``[[fake:exit@3x1]]``) limits the fault to the job's first ``K``
  deliveries, so a retry succeeds.

Without ``faults = true`` markers are plain text.

Its tokenizer (``/tokenize``) is one token per whitespace-separated word, as its usage counts
them: the words it generates have ids, any other word (and any other id) is ``<unk>``.

Tools and structured output (for protocol tests): a request that forces a tool call gets a
call of the named (or first) tool; with ``tool_choice`` auto, a conversation whose last message
is the user's gets a ``<tool_call>`` of the first tool, and one that ends with a tool's result
gets text; a ``response_format``/``guided_json`` schema gets a JSON value built from the
schema (:func:`example`), a ``guided_choice`` its first choice. Such scripted replies stream in
pieces of a few characters, one token each, at the configured pace. With ``echo = true`` the
reply is the prompt as the engine saw it (tool calls and results written out).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import Field

from llmspool.consumers import tools
from llmspool.consumers.backends.base import (
    BackendOptions,
    Delta,
    Prompt,
    StopMatcher,
    Tokenization,
    generation_budget,
    prompt_of,
    sampling_params,
)
from llmspool.shared.config import ModelConfig
from llmspool.shared.messages import Job
from llmspool.shared.protocol import ChatCompletionTokenLogprob, ChatMessage, TopLogprob, Usage

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "queues",
    "hum",
    "and",
    "tokens",
    "stream",
    "from",
    "redis",
    "to",
    "every",
    "patient",
    "client",
    "across",
    "the",
    "wire",
]


#: The fake tokenizer's vocabulary: the words it generates; any other word is ``<unk>``.
TOKENS = ["<unk>", *dict.fromkeys(WORDS)]
UNKNOWN = 0
VOCABULARY = {word: i for i, word in enumerate(TOKENS) if i != UNKNOWN}


class Options(BackendOptions):
    ttft_ms: float = Field(default=0.0, ge=0, description="Delay before the first token.")
    itl_ms: float = Field(default=0.0, ge=0, description="Delay between tokens.")
    embedding_dim: int = Field(default=8, ge=1, le=4096, description="Size of fake embeddings.")
    eos_after: int | None = Field(
        default=None,
        ge=0,
        description="End every generation after this many tokens with finish_reason 'stop', "
        "as a model that ends its answer (unset: it runs to max_tokens).",
    )
    max_model_len: int = Field(
        default=2048, ge=16, description="Context length in (whitespace-separated) tokens."
    )
    faults: bool = Field(
        default=False,
        description="Honour [[fake:exit@N]] / [[fake:raise@N]] prompt markers "
        "(fault injection for tests and the chaos run; never in production).",
    )
    echo: bool = Field(
        default=False, description="Reply with the prompt as the engine saw it (tests)."
    )


_FAULT = re.compile(r"\[\[fake:(exit|raise)@(\d+)(?:x(\d+))?\]\]")


class Fault:
    """A fault a prompt asked for: what, before which token, on which deliveries."""

    def __init__(self, kind: str, at: int, deliveries: int | None) -> None:
        self.kind, self.at, self.deliveries = kind, at, deliveries

    @classmethod
    def find(cls, prompt: str, attempt: int) -> Fault | None:
        match = _FAULT.search(prompt)
        if match is None:
            return None
        deliveries = int(match[3]) if match[3] else None
        if deliveries is not None and attempt > deliveries:
            return None
        return cls(match[1], int(match[2]), deliveries)

    def strike(self, token: int) -> None:
        """Misbehave if ``token`` is the one this fault waits for."""
        if token != self.at:
            return
        if self.kind == "exit":
            os._exit(137)
        raise RuntimeError(f"injected fault before token {token}")


class FakeBackend:
    """Deterministic text at a fixed pace; counts what it generates."""

    def __init__(self, model: ModelConfig, options: Options) -> None:
        self.model = model
        self.options = options
        self.max_concurrency = model.max_concurrency
        self.max_model_len: int | None = options.max_model_len
        #: Tokens generated since start, cancelled jobs included (tests read it).
        self.tokens_generated = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def generate(self, job: Job) -> AsyncIterator[Delta]:
        plan = tools.plan_of(job)
        return tools.shaped(plan, self._generate(job, plan))

    async def _generate(self, job: Job, plan: tools.OutputPlan) -> AsyncIterator[Delta]:
        params = sampling_params(job, self.model)
        prompt = tools.plain_prompt(prompt_of(job), plan)
        limit = generation_budget(
            params, count_tokens(prompt_text(prompt)), self.options.max_model_len, prompt.is_chat
        )
        start = time.monotonic()
        matcher = StopMatcher(params.stop)
        words = self._words(prompt, plan, params.seed)
        fault = Fault.find(prompt_text(prompt), job.attempt) if self.options.faults else None
        produced = 0
        for i in range(limit):
            if i == self.options.eos_after:
                yield _final("stop", prompt, produced)
                return
            await _sleep_until(start + (self.options.ttft_ms + i * self.options.itl_ms) / 1000)
            if fault is not None:
                fault.strike(i)
            word = next(words, None)
            if word is None:
                yield _final("stop", prompt, produced, matcher.flush())
                return
            self.tokens_generated += 1
            produced += 1
            text = matcher.feed(word)
            logprobs = None if params.logprobs is None else [fake_logprob(word, params.logprobs)]
            if matcher.matched:
                if text:
                    yield Delta(text=text, tokens=1, logprobs=logprobs)
                yield _final("stop", prompt, produced)
                return
            if text or logprobs:
                yield Delta(text=text, tokens=1, logprobs=logprobs)
        yield _final("length", prompt, produced, matcher.flush())

    def _words(self, prompt: Prompt, plan: tools.OutputPlan, seed: int | None) -> Iterator[str]:
        scripted = script(prompt, plan)
        if scripted is None and self.options.echo:
            scripted = prompt_text(prompt)
        if scripted is not None:
            return iter(pieces(scripted))
        return token_stream(prompt_text(prompt), seed)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [fake_embedding(text, self.options.embedding_dim) for text in texts]

    async def tokenize(self, request: Tokenization) -> list[int]:
        """One token per word of the text generation counts (see :func:`count_tokens`); the
        fake tokenizer has no special tokens to add."""
        return [VOCABULARY.get(word, UNKNOWN) for word in prompt_text(request.prompt).split()]

    async def detokenize(self, tokens: list[int]) -> str:
        """Any id outside its vocabulary is ``<unk>``, as any unknown word is."""
        return " ".join(TOKENS[t] if t < len(TOKENS) else TOKENS[UNKNOWN] for t in tokens)


def create(model: ModelConfig) -> FakeBackend:
    return FakeBackend(model, Options.model_validate(model.options))


def prompt_text(prompt: Prompt) -> str:
    if prompt.text is not None:
        return prompt.text
    return "\n".join(message.text() for message in prompt.messages)


def count_tokens(text: str) -> int:
    """The fake engine's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def token_stream(prompt: str, seed: int | None) -> WordStream:
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    offset = int.from_bytes(digest[:4], "big")
    return WordStream(offset)


class WordStream:
    """Endless deterministic words, each with a leading space after the first."""

    def __init__(self, offset: int) -> None:
        self._offset = offset
        self._i = 0

    def __iter__(self) -> WordStream:
        return self

    def __next__(self) -> str:
        word = WORDS[(self._offset + self._i * 7) % len(WORDS)]
        text = word if self._i == 0 else " " + word
        self._i += 1
        return text


def fake_logprob(word: str, top: int) -> ChatCompletionTokenLogprob:
    """Deterministic logprobs for ``word``: it is the likeliest token, ``top`` alternatives
    follow it from the word list, each less likely than the last."""
    logprob = -((len(word) % 5) + 1) / 10
    alternatives = [word] + [w for w in dict.fromkeys(WORDS) if w != word.strip()]
    return ChatCompletionTokenLogprob(
        token=word,
        logprob=logprob,
        bytes=list(word.encode()),
        top_logprobs=[
            TopLogprob(token=alt, logprob=logprob - i, bytes=list(alt.encode()))
            for i, alt in enumerate(alternatives[:top])
        ],
    )


def fake_embedding(text: str, dim: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dim)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def script(prompt: Prompt, plan: tools.OutputPlan) -> str | None:
    """The scripted reply to a request with tools or a constraint; None: free text."""
    if plan.forced and plan.constraint is not None:
        return json.dumps(example(plan.constraint.value))
    last = prompt.messages[-1] if prompt.messages else None
    if plan.choice == "auto" and last is not None and _asks(last):
        first = plan.functions[0]
        call = {"name": first.name, "arguments": example(first.parameters or {})}
        return tools.OPEN + json.dumps(call) + tools.CLOSE
    constraint = plan.constraint
    if constraint is None:
        return None
    if constraint.kind == "json_schema":
        return json.dumps(example(constraint.value))
    if constraint.kind == "choice":
        return str(constraint.value[0])
    return json.dumps({"answer": "the quick brown fox"})


def _asks(message: ChatMessage) -> bool:
    """Whether the conversation ends with the user's question (not a tool's result)."""
    return message.role == "user" and not message.text().startswith("<tool_response>")


def pieces(text: str, size: int = 4) -> list[str]:
    """``text`` cut into pieces of ``size`` characters, one fake token each."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def example(schema: Any) -> Any:
    """A deterministic value that satisfies ``schema`` (the common JSON-schema keywords)."""
    if not isinstance(schema, dict):
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    for key in ("enum", "anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return options[0] if key == "enum" else example(options[0])
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = kind[0] if kind else "null"
    return _EXAMPLES.get(kind, _example_string)(schema) if isinstance(kind, str) else None


def _example_object(schema: dict[str, Any]) -> Any:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {name: example(sub) for name, sub in properties.items()}


def _example_array(schema: dict[str, Any]) -> Any:
    return [example(schema.get("items", {})) for _ in range(max(1, _int(schema, "minItems", 1)))]


def _example_string(schema: dict[str, Any]) -> Any:
    return "x" * max(4, _int(schema, "minLength", 0))


def _int(schema: dict[str, Any], key: str, default: int) -> int:
    value = schema.get(key, default)
    return min(value, 64) if isinstance(value, int) else default


_EXAMPLES: dict[str, Any] = {
    "object": _example_object,
    "array": _example_array,
    "string": _example_string,
    "integer": lambda s: _int(s, "minimum", 1),
    "number": lambda s: 1.5,
    "boolean": lambda s: True,
    "null": lambda s: None,
}


def _final(reason: str, prompt: Prompt, produced: int, tail: str = "") -> Delta:
    prompt_tokens = count_tokens(prompt_text(prompt))
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=produced,
        total_tokens=prompt_tokens + produced,
    )
    return Delta(text=tail, finish_reason="stop" if reason == "stop" else "length", usage=usage)


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    # Always yield to the loop, even at zero delay, so a zero-delay engine cannot starve it.
    await asyncio.sleep(delay if delay > 0 else 0)
