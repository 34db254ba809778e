"""The load client: streamed OpenAI requests over aiohttp, timed per chunk.

A :class:`Sample` is one request: when it started, when each content chunk arrived, how many
tokens it carried and whether it failed. :func:`closed_loop` keeps ``concurrency`` requests in
flight; :func:`poisson` starts requests at exponential intervals (seeded). Both run a warm-up
whose samples are dropped, then a measured window; requests still running after the window
plus a grace are cancelled and counted as unfinished, not as errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

PROMPT = "Tell me about queues and streams in distributed systems."


@dataclass(slots=True)
class Sample:
    """One request as the client saw it (times from ``time.perf_counter``)."""

    start: float
    chunks: list[float] = field(default_factory=list)
    end: float = 0.0
    tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunks)

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (None for one-token replies)."""
        if self.tokens < 2:
            return None
        return (self.end - self.chunks[0]) / (self.tokens - 1)

    def itls(self) -> list[float]:
        """Gaps between consecutive content chunks."""
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send requests and what to ask for."""

    base_url: str
    model: str
    max_tokens: int = 32
    api_key: str = "none"
    chat: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    def url(self) -> str:
        path = "chat/completions" if self.chat else "completions"
        return f"{self.base_url.rstrip('/')}/v1/{path}"

    def body(self, prompt: str) -> bytes:
        body: dict[str, object] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra,
        }
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return orjson.dumps(body)


def session(limit: int = 1024, timeout: float = 120.0) -> aiohttp.ClientSession:
    """One client session with enough connections for the highest concurrency."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))


async def request(http: aiohttp.ClientSession, target: Target, prompt: str = PROMPT) -> Sample:
    """Send one streamed request and time its chunks."""
    sample = Sample(start=time.perf_counter())
    headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}
    try:
        async with http.post(target.url(), data=target.body(prompt), headers=headers) as resp:
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return sample
            await _read_stream(resp, sample, target.chat)
    except (aiohttp.ClientError, TimeoutError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    finally:
        sample.end = time.perf_counter()
    return sample


async def _read_stream(resp: aiohttp.ClientResponse, sample: Sample, chat: bool) -> None:
    usage_tokens = None
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = orjson.loads(data)
        if "error" in event:
            sample.error = str(event["error"])[:200]
            return
        text = _content(event, chat)
        if text:
            sample.chunks.append(time.perf_counter())
        usage = event.get("usage")
        if usage:
            usage_tokens = usage.get("completion_tokens")
    # Servers that send no usage send one token per chunk.
    sample.tokens = usage_tokens if usage_tokens is not None else len(sample.chunks)


def _content(event: dict[str, object], chat: bool) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return ""
    choice = choices[0]
    if chat:
        return str(choice.get("delta", {}).get("content") or "")
    return str(choice.get("text") or "")


@dataclass
class Run:
    """Every sample of a run and its measured window ``[lo, hi)``.

    Latencies come from requests started in the window, throughput from those that ended in it.
    """

    samples: list[Sample]
    lo: float
    hi: float
    unfinished: int = 0

    @property
    def window(self) -> float:
        return self.hi - self.lo

    def started(self) -> list[Sample]:
        return [s for s in self.samples if self.lo <= s.start < self.hi]

    def ended(self) -> list[Sample]:
        return [s for s in self.samples if self.lo <= s.end < self.hi and s.ok]


SendOne = Callable[[], Awaitable[Sample]]


async def closed_loop(send: SendOne, concurrency: int, warmup: float, window: float) -> Run:
    """``concurrency`` users, each sending its next request when the last one ends."""
    begin = time.perf_counter()
    stop_at = begin + warmup + window
    samples: list[Sample] = []

    async def user() -> None:
        while time.perf_counter() < stop_at:
            samples.append(await send())

    return await _measure(
        [asyncio.create_task(user()) for _ in range(concurrency)], samples, begin, warmup, window
    )


async def poisson(send: SendOne, rate: float, seed: int, warmup: float, window: float) -> Run:
    """Requests at exponential intervals of mean ``1/rate`` (open loop), seeded."""
    rng = random.Random(seed)
    begin = time.perf_counter()
    stop_at = begin + warmup + window
    samples: list[Sample] = []
    tasks: list[asyncio.Task[None]] = []

    async def one() -> None:
        samples.append(await send())

    when = begin
    while when < stop_at:
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
        when += rng.expovariate(rate)
    return await _measure(tasks, samples, begin, warmup, window)


async def _measure(
    tasks: list[asyncio.Task[None]],
    samples: list[Sample],
    begin: float,
    warmup: float,
    window: float,
) -> Run:
    lo, hi = begin + warmup, begin + warmup + window
    grace = max(10.0, window)
    _, late = await asyncio.wait(tasks, timeout=max(0.01, hi + grace - time.perf_counter()))
    for task in late:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*late, return_exceptions=True)
    return Run(samples, lo, hi, unfinished=len(late))
