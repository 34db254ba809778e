"""The operator's command line against real processes; its numbers agree with redis-cli."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from llmspool.shared import keys
from tests.conftest import StackFactory
from tests.helpers import Stack, free_port, wait_until

pytestmark = pytest.mark.e2e


def llmspool(stack: Stack, *args: str, env: dict[str, str] | None = None) -> Any:
    return stack.llmspool(*args, **(env or {}))


def xinfo_group(stack: Stack, stream: str) -> dict[str, str]:
    words = stack.redis.cli("XINFO", "GROUPS", stream).splitlines()
    return dict(zip(words[::2], words[1::2], strict=True))


def test_queue_and_workers_agree_with_redis_cli(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    stack.start_api()
    body = {"model": "fake", "prompt": "x", "max_tokens": 3}
    waiting = threading.Thread(
        target=lambda: httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60)
    )
    waiting.start()  # no worker yet: the job waits for its turn in the stream's waiting room
    room = keys.waiting(keys.requests_stream("fake"))
    wait_until(lambda: stack.redis.client().xlen(room) == 1, 10)

    queue = json.loads(llmspool(stack, "queue", "fake", "--json").stdout)
    group = xinfo_group(stack, keys.requests_stream("fake"))
    assert queue["lag"] == int(group["lag"]) + int(stack.redis.cli("XLEN", room)) == 1
    assert queue["pending"] == int(group["pending"]) == 0
    assert queue["streams"][0]["waiting"] == 1
    length = int(stack.redis.cli("XLEN", keys.requests_stream("fake")))
    assert queue["streams"][0]["length"] == length
    assert queue["oldest_age"] >= 0 and queue["dead"] == 0 and queue["backlog"] == 1

    stack.start_worker("fake")
    waiting.join(60)
    queue = json.loads(llmspool(stack, "queue", "fake", "--json").stdout)
    group = xinfo_group(stack, keys.requests_stream("fake"))
    assert queue["lag"] == int(group["lag"]) == 0 and queue["backlog"] == 0
    assert queue["oldest_age"] is None

    workers = json.loads(llmspool(stack, "workers", "--json").stdout)
    names = stack.redis.cli("--scan", "--pattern", keys.worker_pattern()).split()
    assert sorted(keys.worker(w["id"]) for w in workers) == sorted(names)
    for worker in workers:
        key = keys.worker(worker["id"])
        assert str(worker["in_flight"]) == stack.redis.cli("HGET", key, "in_flight").strip()
        assert str(worker["pid"]) == stack.redis.cli("HGET", key, "pid").strip()
    table = llmspool(stack, "workers").stdout
    assert workers[0]["id"][:12] in table


def test_models_scale_offline_and_errors(fake_stack: Stack) -> None:
    listed = json.loads(llmspool(fake_stack, "models", "--json").stdout)
    assert [m["name"] for m in listed] == ["fake"] and len(listed[0]["workers"]) == 1
    assert llmspool(fake_stack, "scale", "fake", "1").returncode == 0
    assert fake_stack.redis.cli("HGET", keys.control("fake"), "pin").strip() == "1"
    assert llmspool(fake_stack, "scale", "fake", "--auto").returncode == 0
    assert fake_stack.redis.cli("HGET", keys.control("fake"), "pin").strip() == ""

    too_many = llmspool(fake_stack, "scale", "fake", "9")
    assert too_many.returncode == 1 and too_many.stderr.count("\n") == 1
    assert "0..1" in too_many.stderr
    unknown = llmspool(fake_stack, "queue", "nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    assert llmspool(fake_stack, "scale", "fake").returncode == 2
    away = llmspool(
        fake_stack, "models", env={"LLMSPOOL_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    assert away.returncode == 3 and "cannot reach Redis" in away.stderr

    assert llmspool(fake_stack, "models", "offline", "fake").returncode == 0
    body = {"model": "fake", "prompt": "x", "max_tokens": 2}
    url = f"{fake_stack.base_url}/v1/completions"
    wait_until(lambda: httpx.post(url, json=body, timeout=10).status_code == 503, 10)
    assert llmspool(fake_stack, "models", "online", "fake").returncode == 0
    wait_until(lambda: httpx.post(url, json=body, timeout=10).status_code == 200, 10)
    frame = llmspool(fake_stack, "top", "--once")
    assert frame.returncode == 0 and "fake" in frame.stdout

    reload = llmspool(fake_stack, "reload", "--wait", "0.5")
    assert reload.returncode == 4 and "no control loop" in reload.stderr
    restart = llmspool(fake_stack, "restart", "fake")
    assert restart.returncode == 4 and "no control loop" in restart.stderr
