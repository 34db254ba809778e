"""Tenants end to end, with keys on: real API, workers, Redis and the openai client. One key's
flood does not hold back another key; request results, events and Idempotency-Keys belong to
the key that made them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llmspool.shared import credentials, keys
from tests.batch_helpers import chat_lines, outcome, submit, wait_status
from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack, chat, fake_text, wait_until
from tests.test_auth import client, quick_key

pytestmark = pytest.mark.e2e

CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 4
[models.options]
ttft_ms = 5
itl_ms = 2

[[models]]
name = "slow"
backend = "fake"
max_concurrency = 1
[models.options]
ttft_ms = 100
itl_ms = 100
"""


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = module_stack(
        redis_server,
        tmp_path_factory.mktemp("tenants"),
        CONFIG,
        LLMSPOOL_AUTH="on",
        LLMSPOOL_BATCH_SWEEP_SECONDS="1",
    )
    stack.start_api()
    stack.start_worker("fake")
    stack.start_worker("slow")
    stack.start_batch_worker(wait=True)
    yield stack
    stack.stop()


def post(stack: Stack, key: str, body: dict[str, object], **headers: str) -> httpx.Response:
    headers["authorization"] = f"Bearer {key}"
    url = f"{stack.base_url}/v1/chat/completions"
    return httpx.post(url, json=body, headers=headers, timeout=120)


def get(stack: Stack, key: str, path: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(f"{stack.base_url}{path}", headers=headers, timeout=30)


def test_a_flood_does_not_hold_back_another_key(stack: Stack) -> None:
    flood, trickle = quick_key(stack), quick_key(stack)
    room = keys.waiting(keys.requests_stream("slow"))
    redis = stack.redis.client()
    with ThreadPoolExecutor(30) as pool:  # half a second a job: 15 s of work
        floods = [pool.submit(post, stack, flood, chat("slow", f"f{i}", 4)) for i in range(30)]
        wait_until(lambda: redis.xlen(room) >= 15, 60, what="the flood queued")
        answer = post(stack, trickle, chat("slow", "mine", 4))
        assert answer.json()["choices"][0]["message"]["content"] == fake_text("mine", 4)
        # served in its turn: most of the flood still waits behind it
        assert redis.xlen(room) >= 10
        assert all(f.result(120).status_code == 200 for f in floods)


def test_request_results_belong_to_their_key(stack: Stack) -> None:
    mine, other = quick_key(stack), quick_key(stack)
    admin = quick_key(stack, scope="admin")
    made = post(stack, mine, chat("fake", "private", 3))
    request_id = made.json()["id"]
    for path in (f"/v1/requests/{request_id}", f"/v1/requests/{request_id}/events"):
        refused = get(stack, other, path)
        assert refused.status_code == 404, path
        assert refused.json()["error"]["code"] == "request_not_found"
        assert get(stack, mine, path).status_code == 200
        assert get(stack, admin, path).status_code == 200
    whole = get(stack, mine, f"/v1/requests/{request_id}").json()
    assert whole["choices"][0]["message"]["content"] == fake_text("private", 3)


def test_idempotency_keys_are_per_api_key_and_outlive_the_reply_log(stack: Stack) -> None:
    first, second = quick_key(stack), quick_key(stack)
    first_id = credentials.digest(first)[:12]
    same = {"idempotency-key": "order-1"}
    one = post(stack, first, chat("fake", "one", 3), **same)
    two = post(stack, second, chat("fake", "two", 3), **same)  # no collision, no squatting
    assert one.status_code == two.status_code == 200
    assert one.json()["id"] != two.json()["id"]
    assert two.json()["choices"][0]["message"]["content"] == fake_text("two", 3)
    # the first reply is kept as long as its Idempotency-Key (24 h), not the log's 300 s
    redis = stack.redis.client()
    assert redis.ttl(keys.reply_log(one.json()["id"])) > 3600
    idempotency = keys.idempotency(first_id, "order-1")
    wait_until(lambda: redis.ttl(idempotency) > 3600, 10, what="the key kept")
    again = post(stack, first, chat("fake", "one", 3), **same)
    assert again.status_code == 200 and again.json() == one.json()


def test_batch_lines_obey_the_keys_models(stack: Stack) -> None:
    key = quick_key(stack, models=("fake",))
    lines = [*chat_lines(2, "fake"), *chat_lines(1, "slow", start=2)]
    mine = client(stack, key)
    done = wait_status(mine, submit(mine, lines).id)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.failed == 1
    output, errors = outcome(mine, done)
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1"]
    (refused,) = errors
    assert refused["custom_id"] == "req-2" and refused["response"]["status_code"] == 403
    assert refused["response"]["body"]["error"]["code"] == "model_not_allowed"


def test_a_batch_is_throttled_by_its_keys_limits_not_refused(stack: Stack) -> None:
    key = quick_key(stack, concurrency=1)
    mine = client(stack, key)
    batch = submit(mine, chat_lines(4, "slow"))
    redis = stack.redis.client()
    most = 0
    while (state := redis.hgetall(keys.batch(batch.id))).get("status") == "in_progress" or (
        state.get("status") == "validating"
    ):
        queued = int(state.get("fanned") or 0)  # every line is valid: the cursor counts them
        done = int(state.get("completed") or 0) + int(state.get("failed") or 0)
        most = max(most, queued - done)
        time.sleep(0.02)
    done = wait_status(mine, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 4, done
    assert most == 1  # one line at a time: the key's concurrency
