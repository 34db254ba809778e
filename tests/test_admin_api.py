"""The admin API against the real API and worker processes."""

from __future__ import annotations

import httpx
import openai
import pytest

from llmspool.shared import keys
from tests.helpers import Stack, wait_until

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "Hi"}]


def test_models_workers_and_queue_views(fake_stack: Stack, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    body = httpx.get(f"{fake_stack.base_url}/admin/models", timeout=10).json()
    (model,) = body["data"]
    assert model["name"] == "fake" and model["pin"] is None and model["offline"] is False
    assert len(model["workers"]) == 1 and model["workers"][0]["capacity"] == 8
    assert model["queue"]["backlog"] == 0 and model["queue"]["dead"] == 0
    assert model["queue"]["streams"][0]["length"] == 1
    workers = httpx.get(f"{fake_stack.base_url}/admin/workers", timeout=10).json()["data"]
    assert [w["id"] for w in workers] == [model["workers"][0]["id"]]
    card = client.models.retrieve("fake")
    assert card.model_extra["llmspool"]["workers"] == 1
    assert card.model_extra["llmspool"]["status"] == "online"


def test_offline_gives_503_then_online_serves(fake_stack: Stack, client: openai.OpenAI) -> None:
    r = httpx.post(f"{fake_stack.base_url}/admin/models/fake/offline", timeout=10)
    assert r.status_code == 200 and r.json()["offline"] is True
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "model_offline"
    assert fake_stack.redis.cli("HGET", keys.control("fake"), "offline").strip() == "1"
    httpx.post(f"{fake_stack.base_url}/admin/models/fake/online", timeout=10)
    reply = client.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"


def test_scale_pin_and_auto_with_bounds(fake_stack: Stack) -> None:
    url = f"{fake_stack.base_url}/admin/models/fake/scale"
    assert httpx.post(url, json={"workers": 1}, timeout=10).json()["pin"] == 1
    assert fake_stack.redis.cli("HGET", keys.control("fake"), "pin").strip() == "1"
    too_many = httpx.post(url, json={"workers": 5}, timeout=10)
    assert too_many.status_code == 400 and "0..1" in too_many.json()["error"]["message"]
    assert httpx.post(url, json={"auto": True}, timeout=10).json()["pin"] is None
    assert httpx.post(url, json={}, timeout=10).status_code == 400
    # the spec says so too: exactly one of workers and auto (true)
    spec = httpx.get(f"{fake_stack.base_url}/openapi.json", timeout=10).json()
    branches = spec["components"]["schemas"]["ScaleRequest"]["oneOf"]
    assert sorted(b["required"][0] for b in branches) == ["auto", "workers"]
    missing = httpx.post(f"{fake_stack.base_url}/admin/models/nope/scale", json={"auto": True})
    assert missing.status_code == 404


def test_drain_worker_makes_it_exit(fake_stack: Stack) -> None:
    worker = fake_stack.processes[-1]
    r = httpx.post(f"{fake_stack.base_url}/admin/workers/fake@/drain", timeout=10)
    assert r.status_code == 200 and r.json()["model"] == "fake"
    wait_until(lambda: worker.poll() is not None, 30, what="the drained worker to exit")
    assert worker.returncode == 0 and fake_stack.consumers("fake") == 0
    gone = httpx.post(f"{fake_stack.base_url}/admin/workers/nobody/stop", timeout=10)
    assert gone.status_code == 404


def test_reload_refuses_a_wait_of_the_wrong_type(fake_stack: Stack) -> None:
    refused = httpx.post(f"{fake_stack.base_url}/admin/reload", json={"wait": "5"}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "wait"
