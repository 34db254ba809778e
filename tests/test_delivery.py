"""Delivery guarantees under failure: real redis-server, real API and worker processes.

One API serves every model of this module; each test has its own model (so its own stream)
and starts the workers it needs. Leases and timeouts are short so that takeovers happen in
about a second.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from llmspool.shared import keys
from tests.helpers import Event, RedisServer, Stack, chat, events, fake_text, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = """
[[models]]
name = "crash"
backend = "fake"
max_concurrency = 4
[models.options]
ttft_ms = 1500
itl_ms = 30

[[models]]
name = "long"
backend = "fake"
[models.options]
itl_ms = 100

[[models]]
name = "poison"
backend = "fake"
max_concurrency = 2
max_attempts = 2
[models.options]
itl_ms = 5
faults = true

[[models]]
name = "slow"
backend = "fake"
[models.options]
itl_ms = 50

[[models]]
name = "queue1"
backend = "fake"
[models.options]
itl_ms = 50

[[models]]
name = "full"
backend = "fake"
queue_limit = 2

[[models]]
name = "trim"
backend = "fake"

[[models]]
name = "schema"
backend = "fake"
max_attempts = 1

[[models]]
name = "drain"
backend = "fake"
max_concurrency = 2
[models.options]
itl_ms = 50

[[models]]
name = "resume"
backend = "fake"
max_concurrency = 4
[models.options]
itl_ms = 40
"""

ENV = {
    "LLMSPOOL_LEASE": "1.5",
    "LLMSPOOL_REPLY_POLL": "0.5",
    "LLMSPOOL_BLOCK_MS": "200",
    "LLMSPOOL_CANCEL_GRACE": "1",
    "LLMSPOOL_REDIS_TIMEOUT": "3",
    "LLMSPOOL_DRAIN_TIMEOUT": "5",
}


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_server.client().flushall()
    workdir = tmp_path_factory.mktemp("delivery")
    config = workdir / "llmspool.toml"
    config.write_text(CONFIG)
    stack = Stack(redis_server, config, workdir, extra_env=ENV)
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def post(stack: Stack, body: dict[str, object], **kwargs: object) -> httpx.Response:
    kwargs.setdefault("timeout", 60)
    return httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, **kwargs)  # type: ignore[arg-type]


def stream(
    stack: Stack, body: dict[str, object], until: Future[None] | None = None, **headers: str
) -> list[Event]:
    """Every event of a streamed request; ``until`` is resolved at its first text."""
    got: list[Event] = []
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        json={**body, "stream": True},
        headers=headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        for event in events(response):
            got.append(event)
            if until is not None and event.text and not until.done():
                until.set_result(None)
    return got


def text_of(got: list[Event]) -> str:
    return "".join(event.text for event in got)


def stream_key(model: str) -> str:
    return keys.requests_stream(model)


def waiting_key(model: str) -> str:
    """Where jobs wait for their tenant's turn while no worker takes them."""
    return keys.waiting(keys.requests_stream(model))


def added(stack: Stack, model: str) -> int:
    """Jobs ever enqueued for ``model`` (the stream itself is trimmed)."""
    return int(stack.redis.client().xinfo_stream(stream_key(model))["entries-added"])


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


# ----------------------------------------------------------------------------- 1. takeover


def test_worker_killed_mid_job_is_taken_over(stack: Stack, pool: ThreadPoolExecutor) -> None:
    """kill -9 during generation: the jobs stay pending and another worker reclaims them."""
    first = stack.start_worker("crash")
    whole = pool.submit(post, stack, chat("crash", "alpha", 20))
    started: Future[None] = Future()
    interrupted = pool.submit(stream, stack, chat("crash", "beta", 20), started)
    started.result(30)  # the streamed one has sent text
    untouched = pool.submit(stream, stack, chat("crash", "gamma", 20))
    wait_until(lambda: stack.pending("crash") == 3, 10, what="three jobs running")
    first.kill()  # SIGKILL, mid-generation; "gamma" is still before its first token
    stack.start_worker("crash")

    assert content(whole.result(60)) == fake_text("alpha", 20)  # once, whole, not doubled

    got = interrupted.result(60)
    assert fake_text("beta", 20).startswith(text_of(got))  # no duplicated or mixed text
    assert got[-1].error is not None and got[-1].error["code"] == "stream_interrupted"

    got = untouched.result(60)
    assert text_of(got) == fake_text("gamma", 20) and got[-1].data == "[DONE]"
    assert all(e.id.startswith("2.") for e in got if e.text and e.id)  # served by attempt 2
    wait_until(lambda: stack.pending("crash") == 0, 10, what="all acknowledged")


def test_long_generation_keeps_its_lease(stack: Stack) -> None:
    """A job running for longer than the lease is neither stolen nor retried."""
    stack.start_worker("long")
    got = stream(stack, chat("long", "patience", 30))  # 3 s, twice the lease
    assert text_of(got) == fake_text("patience", 30) and got[-1].data == "[DONE]"
    assert {e.id.split(".")[0] for e in got if e.id and e.text} == {"1"}


# ----------------------------------------------------------------------------- 2. poison


def test_poison_jobs_go_to_the_dead_stream(stack: Stack, pool: ThreadPoolExecutor) -> None:
    worker = stack.start_worker("poison")
    response = post(stack, chat("poison", "[[fake:raise@1]] boom", 5))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "job_failed"
    assert response.headers["x-should-retry"] == "false"

    killer = pool.submit(post, stack, chat("poison", "[[fake:exit@1]] bang", 5))
    worker.wait(30)  # it kills each worker that takes it, max_attempts (2) times
    stack.start_worker("poison", wait=False).wait(30)
    stack.start_worker("poison", wait=False)  # the third buries it
    response = killer.result(30)
    assert response.status_code == 500 and "dead stream" in response.json()["error"]["message"]

    assert content(post(stack, chat("poison", "fine", 3))) == fake_text("fine", 3)
    dead = stack.redis.client().xrange(keys.dead_stream("poison"))
    assert len(dead) == 2
    assert "injected fault before token 1" in dead[0][1]["error"]
    assert "worker stopped" in dead[1][1]["error"] and dead[1][1]["request_id"]
    assert stack.pending("poison") == 0


# ----------------------------------------------------------------------------- 3. cancel


def test_client_disconnect_cancels(stack: Stack, pool: ThreadPoolExecutor) -> None:
    stack.start_worker("slow")
    redis = stack.redis.client()
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        json=chat("slow", "bye", 200, stream=True),
        timeout=30,
    ) as response:
        streamed_id = response.headers["x-request-id"]
        for n, _ in enumerate(events(response)):
            if n == 3:
                break  # the client goes away mid-stream
    wait_until(lambda: stack.pending("slow") == 0, 10, what="the stream's job aborted")

    running = pool.submit(post, stack, chat("slow", "running", 200), timeout=1.0)
    wait_until(lambda: stack.pending("slow") == 1, 10, what="the second job running")
    # gives up sooner, so its cancel reaches the worker while it is still queued
    queued = pool.submit(post, stack, chat("slow", "queued", 200), timeout=0.3)
    for gone in (running, queued):
        with pytest.raises(httpx.ReadTimeout):
            gone.result(10)
    wait_until(lambda: stack.pending("slow") == 0 and added(stack, "slow") == 3, 10)
    queued_id = redis.xrange(stream_key("slow"))[-1][1]["request_id"]

    # the slot is free again, and a short job goes through it
    assert content(post(stack, chat("slow", "next", 2))) == fake_text("next", 2)
    stack.heartbeats("slow")
    assert stack.engine_tokens("slow") < 200  # three 200-token jobs; none ran to the end
    assert redis.xlen(keys.reply_log(queued_id)) == 1  # skipped: no frame at all
    channels = [keys.reply_channel(streamed_id), keys.reply_channel(queued_id)]
    assert all(n == 0 for _, n in redis.pubsub_numsub(*channels))
    assert redis.pubsub_numpat() == 0 and len(redis.pubsub_channels(keys.reply_channel("*"))) == 0


# ----------------------------------------------------------------------------- 4. deadlines


def test_deadline_passed_in_queue_is_not_run(stack: Stack, pool: ThreadPoolExecutor) -> None:
    stack.start_worker("queue1")
    bad = post(stack, chat("queue1", "x", 2), headers={"x-llmspool-timeout": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-llmspool-timeout"
    busy = pool.submit(post, stack, chat("queue1", "busy", 40))  # two seconds
    wait_until(lambda: stack.pending("queue1") == 1, 10)
    late = post(stack, chat("queue1", "late", 40), headers={"x-llmspool-timeout": "0.5"})
    assert late.status_code == 504 and late.headers["x-should-retry"] == "false"
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert content(busy.result(30)) == fake_text("busy", 40)
    redis = stack.redis.client()
    wait_until(lambda: stack.pending("queue1") == 0, 10)
    late_id = redis.xrange(stream_key("queue1"))[-1][1]["request_id"]
    frames = [json.loads(f["f"]) for _, f in redis.xrange(keys.reply_log(late_id))[1:]]
    assert [f["error"]["kind"] for f in frames] == ["DeadlineExceeded"]
    assert "while it was queued" in frames[0]["error"]["message"]
    stack.heartbeats("queue1")
    assert stack.engine_tokens("queue1") == 40  # only the busy job ran


# ----------------------------------------------------------------------------- 5. backpressure


def test_queue_limit_answers_429(stack: Stack, pool: ThreadPoolExecutor) -> None:
    waiting = [
        pool.submit(post, stack, chat("full", str(i), 2), headers={"x-llmspool-timeout": "1"})
        for i in range(2)
    ]
    wait_until(lambda: stack.redis.client().xlen(waiting_key("full")) == 2, 10)
    refused = post(stack, chat("full", "one too many", 2))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert stack.redis.client().xlen(waiting_key("full")) == 2  # not enqueued
    assert all(w.result(30).status_code == 504 for w in waiting)


# ----------------------------------------------------------------------------- 7. trimming


def test_trimming_keeps_pending_jobs(stack: Stack) -> None:
    redis = stack.redis.client()
    stack.start_worker("trim", LLMSPOOL_LEASE="120")  # a lease longer than the test
    quick = [f"quick {i}" for i in range(10)]
    for prompt in quick[:5]:
        assert content(post(stack, chat("trim", prompt, 2))) == fake_text(prompt, 2)
    # a job taken by a consumer that never acknowledges it (atomically: before the worker)
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(stream_key("trim"), {"v": "1", "request_id": "held"})
    pipe.xreadgroup(keys.GROUP, "slowpoke", {stream_key("trim"): ">"}, count=1)
    held_id, _ = pipe.execute()
    for prompt in quick[5:]:
        assert content(post(stack, chat("trim", prompt, 2))) == fake_text(prompt, 2)
    wait_until(lambda: redis.xlen(stream_key("trim")) < 11, 10, what="the stream trimmed")
    assert redis.xrange(stream_key("trim"))[0][0] == held_id  # never below the pending one
    redis.xack(stream_key("trim"), keys.GROUP, held_id)
    wait_until(lambda: redis.xlen(stream_key("trim")) <= 1, 10, what="trimmed to the last")


# ----------------------------------------------------------------------------- 8. shutdown


def test_worker_sigterm_finishes_or_hands_back(stack: Stack, pool: ThreadPoolExecutor) -> None:
    first = stack.start_worker("drain")
    finishing = pool.submit(post, stack, chat("drain", "finish me", 20))  # one second
    wait_until(lambda: stack.pending("drain") == 1, 10)
    first.send_signal(signal.SIGTERM)
    assert content(finishing.result(30)) == fake_text("finish me", 20)
    assert first.wait(15) == 0

    impatient = stack.start_worker("drain", LLMSPOOL_DRAIN_TIMEOUT="0.2")
    handed = pool.submit(post, stack, chat("drain", "hand me back", 60))  # three seconds
    wait_until(lambda: stack.pending("drain") == 1, 10)
    impatient.send_signal(signal.SIGTERM)
    assert impatient.wait(15) == 0
    assert not handed.done()
    stack.start_worker("drain")  # takes it over at once: it was handed back, not abandoned
    assert content(handed.result(30)) == fake_text("hand me back", 60)
    assert "handing back" in stack.log("worker-drain.log")


def test_api_sigterm_finishes_open_streams(
    stack: Stack, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    stack.start_worker("drain")
    api = Stack(stack.redis, stack.config, tmp_path, extra_env=ENV)
    process = api.start_api()
    try:
        started: Future[None] = Future()
        open_stream = pool.submit(stream, api, chat("drain", "stay", 40), started)
        started.result(30)
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: not api._healthy(), 10, what="the API to stop accepting")
        got = open_stream.result(30)
        assert text_of(got) == fake_text("stay", 40) and got[-1].data == "[DONE]"
        assert process.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    finally:
        api.stop()


# ----------------------------------------------------------------------------- 9. resume


def test_stream_resumes_with_last_event_id(stack: Stack) -> None:
    stack.start_worker("resume")
    body = chat("resume", "again", 30, stream=True)
    url = f"{stack.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        request_id = response.headers["x-request-id"]
        first = []
        for event in events(response):
            first.append(event)
            if sum(1 for e in first if e.text) == 5:
                break  # the connection drops
    events_url = f"{stack.base_url}/v1/requests/{request_id}/events"
    last = {"last-event-id": first[-1].id or ""}
    with httpx.stream("GET", events_url, headers=last, timeout=30) as response:
        rest = list(events(response))
    ids = [e.id for e in first + rest if e.id]
    assert len(ids) == len(set(ids))  # no duplicate
    assert text_of(first + rest) == fake_text("again", 30)  # no gap
    assert rest[-1].data == "[DONE]"

    # after the end, from any event, and as a whole object
    with httpx.stream("GET", events_url, timeout=30) as response:
        replay = list(events(response))
    assert [e.data for e in replay] == [e.data for e in first + rest]
    with httpx.stream("GET", events_url, headers={"last-event-id": ids[3]}, timeout=30) as r:
        assert [e.id for e in events(r) if e.id] == ids[4:]
    whole = httpx.get(f"{stack.base_url}/v1/requests/{request_id}", timeout=30).json()
    assert whole["id"] == request_id
    assert whole["choices"][0]["message"]["content"] == fake_text("again", 30)
    missing = httpx.get(f"{stack.base_url}/v1/requests/chatcmpl-nothing/events", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"


# ----------------------------------------------------------------------------- 10. idempotency


def test_idempotency_key_survives_an_api_crash(
    stack: Stack, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    stack.start_worker("resume")
    before = added(stack, "resume")
    other = Stack(stack.redis, stack.config, tmp_path, extra_env=ENV)
    doomed = other.start_api()
    body = chat("resume", "only once", 40)
    key = {"idempotency-key": "order-66"}
    try:
        lost = pool.submit(post, other, body, headers=key)
        wait_until(lambda: stack.pending("resume") == 1, 10)
        doomed.kill()  # the API process dies mid-reply
        with pytest.raises(httpx.HTTPError):
            lost.result(30)
    finally:
        other.stop()
    retried = post(stack, body, headers=key)  # another API process finishes it
    assert content(retried) == fake_text("only once", 40)
    again = post(stack, body, headers=key)
    assert again.json() == retried.json()
    assert added(stack, "resume") == before + 1  # one job, not three
    reused = post(stack, chat("resume", "something else", 2), headers=key)
    assert reused.status_code == 400 and reused.headers["x-should-retry"] == "false"
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


# ----------------------------------------------------------------------------- 11. upgrades


def test_unknown_schema_is_handed_back(stack: Stack) -> None:
    stack.start_worker("schema")
    redis = stack.redis.client()
    job = {
        "v": "2",
        "request_id": "chatcmpl-from-the-future",
        "kind": "chat",
        "model": "schema",
        "enqueued_at": f"{time.time():.6f}",
        "deadline": f"{time.time() + 60:.6f}",
        "body": json.dumps(chat("schema", "hi", 2)),
        "something_new": "x",
    }
    future_id = redis.xadd(stream_key("schema"), job)
    wait_until(
        lambda: int(redis.hget(keys.handbacks("schema"), future_id) or 0) >= 2,
        15,
        what="handed back twice",
    )
    # never run, never dead, though max_attempts is 1: a newer worker can still take it
    assert redis.xlen(keys.dead_stream("schema")) == 0
    assert not redis.exists(keys.reply_log("chatcmpl-from-the-future"))
    claimed = redis.xclaim(stream_key("schema"), keys.GROUP, "v2-worker", 0, [future_id])
    assert claimed[0][1]["something_new"] == "x"
    redis.xack(stream_key("schema"), keys.GROUP, future_id)

    # an expired one is settled with a deadline error instead of circling forever
    expired = {**job, "request_id": "chatcmpl-too-late", "deadline": f"{time.time():.6f}"}
    redis.xadd(stream_key("schema"), expired)
    wait_until(lambda: redis.exists(keys.reply_log("chatcmpl-too-late")), 15)
    wait_until(lambda: stack.pending("schema") == 0, 10)
    # and jobs it reads are served as ever
    assert content(post(stack, chat("schema", "current", 2))) == fake_text("current", 2)
    assert "handed back for a newer worker" in stack.log("worker-schema.log")
