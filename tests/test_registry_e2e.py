"""Every reader of the worker registry, end to end on real processes, with each registry: the
default (hashes in Redis) and etcd (LLMSPOOL_REGISTRY_URL). A SIGKILLed worker leaves within the
TTL; with etcd stopped the workers keep serving, the command line says the registry is down, and
the workers register again once etcd is back."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import REGISTRY_TTL as TTL
from tests.conftest import StackFactory
from tests.helpers import EtcdServer, Stack, scrape, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAKE = {"model_name": "fake"}


def chat(stack: Stack) -> str:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    reply = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=4, timeout=30
    )
    return reply.choices[0].message.content or ""


def get(stack: Stack, path: str) -> Any:
    reply = httpx.get(f"{stack.base_url}{path}", timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_every_reader_sees_the_worker(
    stack_factory: StackFactory, registry_env: dict[str, str]
) -> None:
    stack = stack_factory(**registry_env)
    stack.start_api()
    process = stack.start_worker("fake")
    assert chat(stack)

    (worker,) = json.loads(stack.cli("workers", "--json"))
    assert worker["model"] == "fake" and worker["pid"] == process.pid
    (model,) = json.loads(stack.cli("models", "--json"))
    assert [w["id"] for w in model["workers"]] == [worker["id"]]
    assert f" {process.pid} " in stack.cli("top", "--once")  # the workers table
    (card,) = get(stack, "/v1/models")["data"]
    assert card["llmspool"]["workers"] == 1
    assert [w["id"] for w in get(stack, "/admin/workers")["data"]] == [worker["id"]]
    state = get(stack, "/admin/console/state")
    assert state["registry_error"] is None
    assert [w["id"] for w in state["models"][0]["workers"]] == [worker["id"]]
    samples = scrape(f"{stack.base_url}/metrics")
    assert samples["llmspool:workers", FAKE] == 1 and samples["llmspool:registry_up", {}] == 1

    stack.cli("workers", "stop", worker["id"])  # found through the registry; leaves it on exit
    process.wait(30)
    wait_until(lambda: stack.consumers("fake") == 0, 10, what="the stopped worker to deregister")


def test_a_killed_worker_leaves_the_registry_within_the_ttl(
    stack_factory: StackFactory, registry_env: dict[str, str]
) -> None:
    stack = stack_factory(**registry_env)
    watcher = stack.spawn("workers", "--watch", "--json", log="watch.log")
    process = stack.start_worker("fake")
    assert stack.consumers("fake") == 1
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    # the TTL, plus the time etcd takes to notice an expired lease (it checks twice a second)
    wait_until(lambda: stack.consumers("fake") == 0, TTL + 5, what="the dead worker's entry to go")

    def seen() -> list[tuple[str, int]]:  # (kind, pid) of what `llmspool workers --watch` printed
        log = stack.log("watch.log").splitlines()
        lines = [json.loads(line) for line in log if line.startswith("{")]
        return [(e["kind"], e["worker"]["pid"]) for e in lines if e.get("worker")]

    wait_until(lambda: ("delete", process.pid) in seen(), 10, what="the watch to see it go")
    assert seen() == [("put", process.pid), ("delete", process.pid)]
    assert watcher.poll() is None


def test_etcd_away_stops_nothing_and_workers_return_with_it(
    stack_factory: StackFactory, own_etcd: EtcdServer
) -> None:
    stack = stack_factory(LLMSPOOL_REGISTRY_URL=own_etcd.url, LLMSPOOL_REGISTRY_TTL=str(TTL))
    stack.start_api()
    process = stack.start_worker("fake")
    own_etcd.stop()

    assert chat(stack)  # jobs still flow through Redis
    for command in (["workers"], ["models"], ["top", "--once"]):
        result = stack.llmspool(*command)
        assert result.returncode == 5, result
        assert "registry" in result.stderr and "unreachable" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    (card,) = get(stack, "/v1/models")["data"]
    assert card["llmspool"]["workers"] is None  # unknown, not zero
    assert "unreachable" in get(stack, "/admin/console/state")["registry_error"]
    refused = httpx.get(f"{stack.base_url}/admin/workers", timeout=10)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "registry_unavailable"
    assert scrape(f"{stack.base_url}/metrics")["llmspool:registry_up", {}] == 0
    assert process.poll() is None

    own_etcd.start(wipe=True)  # back, and empty: the worker registers again by itself
    wait_until(lambda: stack.registered(process.pid), 30, what="the worker to register again")
    assert chat(stack)
    assert json.loads(stack.cli("workers", "--json"))[0]["pid"] == process.pid
