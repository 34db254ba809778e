"""The chaos run: steady mixed traffic while workers are killed and Redis is restarted.

    python -m bench.chaos --duration 60 [--workers 3] [--concurrency 12] [--write docs/chaos.md]

It starts its own redis-server (append-only, on a free port, in a temporary directory), the
API and ``--workers`` workers of a fake model, then for ``--duration`` seconds sends streamed and
non-streamed chat requests while, every few seconds, it either ``kill -9``s a random worker
(and starts a new one) or ``kill -9``s Redis and restarts it on the same append-only file.
Then it lets the requests in flight finish and prints what happened to each request:

- completed: the whole reply arrived, and its text is exactly what the fake engine generates
  for that prompt (nothing lost, nothing repeated, nothing mixed);
- failed with a clear error: an OpenAI error body (503 while Redis was away, 429, 504, a dead
  job) or, for a stream whose worker died after sending text, an SSE error event;
- lost: anything else: no answer before the client's own timeout, a stream that just ended,
  a wrong text. Lost must be 0; the exit status is 1 otherwise.

It exists to exercise docs/guarantees.md all at once; it needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmspool.consumers.backends.fake import token_stream
from llmspool.control.redis_server import start_redis

MODEL = "chaos"
CONFIG = f"""
[[models]]
name = "{MODEL}"
backend = "fake"
max_concurrency = 8
max_attempts = 3
[models.options]
ttft_ms = 20
itl_ms = 15
"""
ENV = {
    "LLMSPOOL_LEASE": "2",
    "LLMSPOOL_REPLY_POLL": "0.5",
    "LLMSPOOL_BLOCK_MS": "200",
    "LLMSPOOL_REDIS_TIMEOUT": "2",
    "LLMSPOOL_DRAIN_TIMEOUT": "5",
    "LLMSPOOL_LOG_LEVEL": "warning",
}
REQUEST_TIMEOUT = 60.0  # the deadline each request asks for (X-LLMSpool-Timeout)
CLIENT_TIMEOUT = REQUEST_TIMEOUT + 30  # past this without an answer, a request is lost


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def expected(prompt: str, tokens: int) -> str:
    words = token_stream(prompt, None)
    return "".join(next(words) for _ in range(tokens))


@dataclass
class Tally:
    """Outcomes of the requests sent."""

    sent: int = 0
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "completed": self.completed,
            "failed_with_clear_error": sum(self.failed.values()),
            "failed_by_reason": dict(self.failed),
            "lost": len(self.lost),
        }


class System:
    """redis-server, the API and the workers, as processes this run can kill."""

    def __init__(self, workdir: Path, workers: int) -> None:
        self.workdir = workdir
        self.redis_port = free_port()
        self.api_port = free_port()
        self.wanted = workers
        self.redis: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        (workdir / "llmspool.toml").write_text(CONFIG)
        self.events: Counter[str] = Counter()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSPOOL_")}
        env.update(ENV)
        env.update(
            LLMSPOOL_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            LLMSPOOL_CONFIG=str(self.workdir / "llmspool.toml"),
            LLMSPOOL_PORT=str(self.api_port),
        )
        return env

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{args[0]}.log", "ab")  # noqa: SIM115 - lives with the process
        return subprocess.Popen(
            [sys.executable, "-m", "llmspool", *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )

    def start(self) -> None:
        self.start_redis()
        self.api = self.spawn("api")
        for _ in range(self.wanted):
            self.workers.append(self.spawn("worker", "--model", MODEL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not come up; see {self.workdir}/api.log")

    def start_redis(self) -> None:
        self.redis = start_redis(self.workdir / "redis", port=self.redis_port)

    def kill_worker(self, rng: random.Random) -> None:
        victim = self.workers.pop(rng.randrange(len(self.workers)))
        victim.kill()
        victim.wait()
        self.workers.append(self.spawn("worker", "--model", MODEL))
        self.events["worker killed (-9) and replaced"] += 1

    def restart_redis(self, down_for: float) -> None:
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
        time.sleep(down_for)
        self.start_redis()
        self.events["redis killed (-9) and restarted"] += 1

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.api]:
            if process is not None:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(15)


async def one_request(client: httpx.AsyncClient, rng: random.Random, n: int, tally: Tally) -> None:
    prompt, tokens = f"chaos {n} {rng.random():.6f}", rng.randint(10, 60)
    streamed = rng.random() < 0.5
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "stream": streamed,
    }
    tally.sent += 1
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            outcome = await (_streamed if streamed else _whole)(client, body)
    except TimeoutError:
        outcome = "lost: no answer"
    except httpx.HTTPError as exc:
        outcome = f"lost: {type(exc).__name__}"
    _settle(tally, outcome, expected(prompt, tokens), n)


def _settle(tally: Tally, outcome: str, want: str, n: int) -> None:
    if outcome.startswith("text:"):
        if outcome[len("text:") :] == want:
            tally.completed += 1
        else:
            tally.lost.append(f"request {n}: wrong text")
    elif outcome.startswith("error:"):
        tally.failed[outcome[len("error:") :]] += 1
    else:
        tally.lost.append(f"request {n}: {outcome}")


async def _whole(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    response = await client.post("/v1/chat/completions", json=body)
    if response.status_code == 200:
        return "text:" + str(response.json()["choices"][0]["message"]["content"])
    return _error(response.status_code, response.content)


async def _streamed(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return _error(response.status_code, await response.aread())
        parts: list[str] = []
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                return "text:" + "".join(parts)
            event = json.loads(data)
            if "error" in event:
                return f"error:stream {event['error'].get('code')}"
            parts.append(event["choices"][0]["delta"].get("content") or "")
    return "lost: the stream ended without [DONE] or an error"


def _error(status: int, content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return f"lost: HTTP {status} without an OpenAI error body"
    return f"error:HTTP {status} {error.get('code')}"


async def traffic(base_url: str, duration: float, concurrency: int, seed: int) -> Tally:
    tally, rng, counter = Tally(), random.Random(seed), iter(range(10**9))
    stop = time.monotonic() + duration
    headers = {"x-llmspool-timeout": str(REQUEST_TIMEOUT)}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=CLIENT_TIMEOUT, limits=limits
    ) as client:

        async def sender() -> None:
            while time.monotonic() < stop:
                await one_request(client, rng, next(counter), tally)
                await asyncio.sleep(rng.uniform(0, 0.2))

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return tally


async def mayhem(system: System, duration: float, seed: int) -> None:
    rng = random.Random(seed + 1)
    stop = time.monotonic() + duration
    await asyncio.sleep(2)
    while time.monotonic() < stop - 3:
        if rng.random() < 0.25:
            await asyncio.to_thread(system.restart_redis, rng.uniform(0.5, 2.0))
        else:
            await asyncio.to_thread(system.kill_worker, rng)
        await asyncio.sleep(rng.uniform(2, 5))


async def run(args: argparse.Namespace, system: System) -> Tally:
    sending = asyncio.create_task(
        traffic(system.base_url, args.duration, args.concurrency, args.seed)
    )
    await mayhem(system, args.duration, args.seed)
    return await sending


def report(args: argparse.Namespace, tally: Tally, system: System, took: float) -> str:
    summary = tally.summary()
    lines = [
        "# Chaos run",
        "",
        "Generated by `make chaos` (`python -m bench.chaos --duration "
        f"{args.duration:g} --workers {args.workers} --concurrency {args.concurrency} "
        f"--seed {args.seed}`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{took:.0f} s in all. See the module docstring for what each outcome means.",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {event} | {count} |" for event, count in sorted(system.events.items())),
        f"| requests sent | {summary['sent']} |",
        f"| completed (exact text) | {summary['completed']} |",
        f"| failed with a clear error | {summary['failed_with_clear_error']} |",
        *(f"| &nbsp;&nbsp;{why} | {n} |" for why, n in sorted(tally.failed.items())),
        f"| **lost** | **{summary['lost']}** |",
        "",
    ]
    if tally.lost:
        lines += ["Lost:", "", *(f"- {what}" for what in tally.lost[:20]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=12, help="clients sending at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmspool-chaos-") as tmp:
        system = System(Path(tmp), args.workers)
        try:
            system.start()
            tally = asyncio.run(run(args, system))
        finally:
            system.stop()
    text = report(args, tally, system, time.monotonic() - started)
    print(text)
    print(json.dumps(tally.summary()))
    if args.write is not None:
        args.write.write_text(text)
    sys.exit(1 if tally.lost else 0)


if __name__ == "__main__":
    main()
