"""Redis killed (-9) and restarted with its append-only file, and Redis stalled (CLIENT PAUSE):
every job acknowledged by XADD is served, errors are bounded, every process reconnects."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from llmspool.shared import keys
from tests.helpers import RedisServer, Stack, chat, fake_text, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 2
[models.options]
itl_ms = 20
"""

ENV = {
    "LLMSPOOL_LEASE": "1.5",
    "LLMSPOOL_REPLY_POLL": "0.5",
    "LLMSPOOL_BLOCK_MS": "200",
    "LLMSPOOL_REDIS_TIMEOUT": "1",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    server = RedisServer(
        free_port(), tmp_path / "redis", extra=("--appendonly", "yes", "--appendfsync", "everysec")
    )
    server.start()
    config = tmp_path / "llmspool.toml"
    config.write_text(CONFIG)
    stack = Stack(server, config, tmp_path, extra_env=ENV)
    try:
        stack.start_api()
        stack.start_worker("fake")
        yield stack
    finally:
        stack.stop()
        server.stop(signal.SIGKILL)


def post(stack: Stack, prompt: str, tokens: int = 20) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions", json=chat("fake", prompt, tokens), timeout=90
    )


def served(response: httpx.Response, prompt: str, tokens: int = 20) -> bool:
    return response.status_code == 200 and response.json()["choices"][0]["message"][
        "content"
    ] == fake_text(prompt, tokens)


def test_redis_killed_and_restarted(stack: Stack) -> None:
    server = stack.redis
    prompts = [f"job {i}" for i in range(10)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = [pool.submit(post, stack, prompt) for prompt in prompts]
        wait_until(
            lambda: (
                int(server.client().xinfo_stream(keys.requests_stream("fake"))["entries-added"])
                == len(prompts)
            ),
            20,
            what="every job enqueued",
        )
        server.stop(signal.SIGKILL)  # with jobs queued, running and half-published

        started = time.monotonic()
        away = post(stack, "while redis is away", 2)
        assert away.status_code == 503 and time.monotonic() - started < 15
        assert httpx.get(f"{stack.base_url}/health", timeout=15).status_code == 503

        server.start()  # the same port and append-only file
        for prompt, reply in zip(prompts, replies, strict=True):
            assert served(reply.result(90), prompt), prompt

    # everything reconnected by itself: the API, the worker, both pub/sub listeners
    assert served(post(stack, "after", 3), "after", 3)
    client = server.client()
    wait_until(lambda: client.pubsub_numsub(keys.cancel_channel("fake"))[0][1] == 1, 10)
    wait_until(lambda: len(client.pubsub_channels(keys.producer_channel("*"))) == 1, 10)


def test_redis_paused_gives_bounded_errors(stack: Stack) -> None:
    client = stack.redis.client()
    assert served(post(stack, "before"), "before")
    client.execute_command("CLIENT", "PAUSE", "10000", "ALL")
    probe = redis.Redis(port=stack.redis.port, socket_timeout=0.5)
    with pytest.raises(redis.TimeoutError):
        probe.ping()  # the stall is real
    started = time.monotonic()
    stalled = post(stack, "during the pause", 2)
    assert stalled.status_code == 503, stalled.text  # a 200 could only come after the pause
    assert time.monotonic() - started < 10  # not a hang
    wait_until(lambda: served(post(stack, "after"), "after"), 30, interval=0.5)
