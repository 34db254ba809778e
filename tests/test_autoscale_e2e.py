"""`llmspool serve` with the local driver: real processes, the fake engine, short windows."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llmspool.shared import keys
from tests.conftest import StackFactory
from tests.helpers import Stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BURST_CONFIG = """
[[models]]
name = "burst"
backend = "fake"
max_concurrency = 2
min_workers = 0
max_workers = 3
[models.autoscale]
scale_down_window = 1
idle_window = 3
tick = 0.2
[models.options]
ttft_ms = 5
itl_ms = 40
"""


def start_serve(stack_factory: StackFactory, **env: str) -> Stack:
    stack = stack_factory(BURST_CONFIG, **env)
    stack.start_serve()
    return stack


class PeakWatcher(threading.Thread):
    """Records the most workers of a model seen in the registry."""

    def __init__(self, stack: Stack, model: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.model, self.peak = stack, model, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, self.stack.consumers(self.model))


def test_burst_grows_zero_to_max_serves_all_and_returns_to_zero(
    stack_factory: StackFactory,
) -> None:
    stack = start_serve(stack_factory)
    assert stack.consumers("burst") == 0  # min_workers = 0: nothing runs before work arrives
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    watcher = PeakWatcher(stack, "burst")
    watcher.start()

    def ask(i: int) -> str:
        reply = client.completions.create(model="burst", prompt=f"p{i}", max_tokens=25, timeout=120)
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        reasons = list(pool.map(ask, range(16)))
    assert reasons == ["length"] * 16  # every request of the burst was served
    wait_until(lambda: stack.consumers("burst") == 0, 60, what="the pool back at zero")
    watcher.done.set()
    watcher.join()
    assert watcher.peak == 3, stack.log("serve.log")
    groups = stack.redis.client().xinfo_groups(keys.requests_stream("burst"))
    assert groups[0]["lag"] == 0 and groups[0]["pending"] == 0
    metrics = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    assert 'llmspool:desired_workers{model_name="burst"} 0.0' in metrics


def test_killed_worker_is_restarted(
    stack_factory: StackFactory, registry_env: dict[str, str]
) -> None:
    """With each registry: the control loop counts live workers through it."""
    stack = start_serve(stack_factory, **registry_env)
    stack.redis.client().hset(keys.control("burst"), "pin", "1")
    wait_until(lambda: stack.consumers("burst") == 1, 60, what="the pinned worker")
    (worker,) = stack.live_workers()
    os.kill(worker.pid, signal.SIGKILL)
    # the dead one's registry entry lingers until its TTL; a new pid must appear meanwhile
    wait_until(lambda: set(_pids(stack)) - {worker.pid}, 60, what="a restarted worker")
    assert "restarting in" in stack.log("serve.log")
    wait_until(lambda: worker.pid not in _pids(stack), 60, what="the dead entry to go")
    assert len(_pids(stack)) == 1  # the control loop kept one worker: no second one started


def _pids(stack: Stack) -> list[int]:
    return [worker.pid for worker in stack.live_workers()]


ROLL_CONFIG = """
[[models]]
name = "roll"
backend = "fake"
max_concurrency = 2
min_workers = 2
max_workers = 3
[models.options]
itl_ms = 30
"""

EXTRA = """
[[models]]
name = "extra"
backend = "fake"
[models.options]
itl_ms = {itl}
"""


def test_rolling_restart_loses_no_request_and_reload_applies_the_file(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory(ROLL_CONFIG)
    stack.start_serve()
    wait_until(lambda: stack.consumers("roll") == 2, 60, what="two workers of roll")
    old = set(_pids(stack))
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)

    def ask(model: str) -> str:
        reply = client.completions.create(model=model, prompt="x", max_tokens=20, timeout=120)
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(4) as pool:
        replies = [pool.submit(ask, "roll") for _ in range(24)]
        restart = stack.llmspool("restart", "roll")
        assert restart.returncode == 0, restart.stderr
        assert [r.result() for r in replies] == ["length"] * 24  # none lost to the restart
    wait_until(lambda: len(set(_pids(stack)) - old) == 2, 90, what="two fresh workers")
    wait_until(lambda: not old & set(_pids(stack)), 30, what="old workers gone")

    stack.config.write_text(ROLL_CONFIG + EXTRA.format(itl=1))
    added = stack.llmspool("reload")
    assert added.returncode == 0 and "added extra" in added.stdout, added.stderr
    wait_until(lambda: stack.consumers("extra") == 1, 60, what="a worker of the added model")
    # API processes adopt the reloaded file within a second
    wait_until(lambda: "extra" in [m.id for m in client.models.list()], 10, what="extra listed")
    assert ask("extra") == "length"

    stack.config.write_text(EXTRA.format(itl=2))
    changed = stack.llmspool("reload")
    assert "removed roll" in changed.stdout and "restarted extra" in changed.stdout
    wait_until(lambda: stack.consumers("roll") == 0, 60, what="the removed model's workers")
    wait_until(lambda: [m.id for m in client.models.list()] == ["extra"], 10)
    with pytest.raises(openai.NotFoundError):
        ask("roll")
    stack.config.write_text("[[models]]\nname = 'bad'\n")
    refused = stack.llmspool("reload")
    assert refused.returncode == 1 and "backend" in refused.stderr
