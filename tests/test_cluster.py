"""The end-to-end core on a real 3-master Redis Cluster: chat streamed and not, cancel, and a
killed worker; reply channels are sharded (SSUBSCRIBE/SPUBLISH), never broadcast."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llmspool.shared import keys
from tests.conftest import FAKE_CONFIG
from tests.helpers import RedisClusterServers, Stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def cluster_stack(
    cluster: RedisClusterServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("cluster-stack")
    config = workdir / "llmspool.toml"
    config.write_text(FAKE_CONFIG)
    stack = Stack(cluster, config, workdir, extra_env={"LLMSPOOL_REDIS_CLUSTER": "true"})
    stack.start_api()
    stack.start_worker("fake")
    stack.start_worker("fake")
    yield stack
    stack.stop()


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)


def test_chat_streamed_and_not(cluster_stack: Stack) -> None:
    api = client(cluster_stack)
    for _ in range(6):  # request ids, hence reply channels, land on every shard
        whole = api.chat.completions.create(model="fake", messages=HI, max_tokens=5)
        chunks = api.chat.completions.create(model="fake", messages=HI, max_tokens=5, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content and len(text.split()) == 5
    assert api.completions.create(model="fake", prompt="x", max_tokens=3).choices[0].text


def test_replies_are_sharded_not_broadcast(cluster_stack: Stack) -> None:
    url = f"{cluster_stack.base_url}/v1/chat/completions"
    body = {"model": "fake", "messages": HI, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        lines = response.iter_lines()
        next(lines)
        request_id = response.headers["x-request-id"]
        channel = keys.reply_channel(request_id)
        owners = [
            node
            for node in cluster_stack.redis.nodes  # type: ignore[union-attr]
            if channel in node.cli("PUBSUB", "SHARDCHANNELS", keys.reply_channel("*"))
        ]
        assert len(owners) == 1  # subscribed on the shard that owns the slot, nowhere else
        plain = [node.cli("PUBSUB", "CHANNELS", keys.reply_channel("*")).strip() for node in owners]
        assert plain == [""]
    # leaving early cancelled the job on a worker (SPUBLISH on the cancel channel's shard)
    wait_until(lambda: _idle(cluster_stack), 30, what="the cancelled job to stop")


def _idle(stack: Stack) -> bool:
    client = stack.redis.client()
    return all(
        client.hget(key, "in_flight") in (None, "0")
        for key in client.scan_iter(match=keys.worker_pattern())
    )


def test_a_killed_worker_leaves_the_others_serving(cluster_stack: Stack) -> None:
    workers = [p for p in cluster_stack.processes if "worker" in " ".join(map(str, p.args))]
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait(10)
    api = client(cluster_stack)
    started = time.monotonic()
    for _ in range(4):
        reply = api.chat.completions.create(model="fake", messages=HI, max_tokens=3)
        assert reply.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 60


def test_model_keys_share_one_slot(cluster_stack: Stack, tmp_path: Path) -> None:
    client = cluster_stack.redis.client()
    slots = {client.keyslot(k) for k in (keys.requests_stream("fake"), keys.batch_stream("fake"))}
    assert len(slots) == 1
    assert client.xinfo_groups(keys.requests_stream("fake"))[0]["name"] == keys.GROUP
