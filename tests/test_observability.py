"""Observability end to end: known requests through the real API and worker processes, then
/metrics (API and worker), the request log, feedback, `llmspool log` and the JSON logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmspool.shared import keys
from tests.conftest import FAKE_CONFIG, StackFactory
from tests.dashboards import exposed_names, referenced_metrics
from tests.helpers import Stack, scrape, wait_until

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "Hi"}]
M = {"model_name": "fake"}
IDLE = {"model_name": "idle"}

#: A model no worker serves, whose requests expire after a second.
IDLE_MODEL = """
[[models]]
name = "idle"
backend = "fake"
timeout = 1
"""


@pytest.fixture
def observed(stack_factory: StackFactory, tmp_path: Path) -> Stack:
    stack = stack_factory(
        FAKE_CONFIG + IDLE_MODEL,
        LLMSPOOL_WORKER_METRICS_PORT="0",
        LLMSPOOL_LOG_FORMAT="json",
        LLMSPOOL_LOG_LEVEL="debug",
        LLMSPOOL_REQUEST_LOG_FILE=str(tmp_path / "requests.jsonl"),
    )
    stack.start_api()
    stack.start_worker("fake")
    return stack


def _send_known_requests(client: openai.OpenAI) -> dict[str, dict[str, object]]:
    """3 chat, 2 streamed chat, 1 completion, 1 embedding, 1 refused: what each should log."""
    sent: dict[str, dict[str, object]] = {}
    for i in range(3):
        r = client.chat.completions.create(model="fake", messages=HI, max_tokens=3 + i)
        sent[r.id] = {"outcome": "length", "usage": r.usage, "output": r.choices[0].message.content}
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model="fake", messages=HI, max_tokens=6, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        sent[chunks[0].id] = {"outcome": "length", "usage": chunks[-1].usage, "output": text}
    c = client.completions.create(model="fake", prompt="Say something", max_tokens=4)
    sent[c.id] = {"outcome": "length", "usage": c.usage, "output": c.choices[0].text}
    e = client.embeddings.create(model="fake", input="two words")
    sent["embedding"] = {"outcome": "stop", "usage": e.usage}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=HI, extra_body={"top_k": 5})
    return sent


def test_metrics_request_log_feedback_and_logs(observed: Stack, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{observed.base_url}/v1", api_key="none", max_retries=0)
    sent = _send_known_requests(client)
    prompt = sum(s["usage"].prompt_tokens for s in sent.values())  # type: ignore[attr-defined]
    generated = sum(getattr(s["usage"], "completion_tokens", 0) or 0 for s in sent.values())
    api = f"{observed.base_url}/metrics"
    wait_until(
        lambda: scrape(api).get(("llmspool:e2e_request_latency_seconds_count", M)) == 7,
        20, what="7 finished requests in /metrics",
    )  # fmt: skip
    m = scrape(api)
    assert m["llmspool:request_success_total", {**M, "finished_reason": "length"}] == 6
    assert m["llmspool:request_success_total", {**M, "finished_reason": "stop"}] == 1
    assert m["llmspool:request_success_total", {**M, "finished_reason": "abort"}] == 0
    assert m["llmspool:request_errors_total", {**M, "error_type": "unsupported_parameter"}] == 1
    assert m["llmspool:time_to_first_token_seconds_count", M] == 6
    assert m["llmspool:request_queue_time_seconds_count", M] == 7
    assert m["llmspool:prompt_tokens_total", M] == prompt
    assert m["llmspool:generation_tokens_total", M] == generated == 3 + 4 + 5 + 12 + 4
    assert m["llmspool:reply_tokens_relayed_total", M] == generated
    assert m["llmspool:request_generation_tokens_sum", M] == generated
    assert m["llmspool:request_prompt_tokens_count", M] == 7
    # every token after a request's first frame is one inter-token gap
    assert generated - 6 * 2 <= m["llmspool:inter_token_latency_seconds_count", M] <= generated - 6
    assert m["llmspool:num_requests_running", M] == 0
    assert m["llmspool:num_requests_waiting", M] == 0
    queue = {**M, "queue": "requests"}
    assert m["llmspool:queue_depth", queue] == 0 and m["llmspool:queue_lag", queue] == 0
    # XLEN: workers trim settled jobs away (XTRIM MINID), keeping at least the last delivered
    assert 1 <= m["llmspool:queue_length", queue] <= 7
    assert m["llmspool:workers", M] == 1 and m["llmspool:dead_jobs", M] == 0
    assert m["llmspool:redis_up", {}] == 1
    # every family exists for a model nobody used
    assert m["llmspool:time_to_first_token_seconds_count", IDLE] == 0
    assert m["llmspool:request_success_total", {**IDLE, "finished_reason": "stop"}] == 0
    assert m["llmspool:num_requests_waiting", IDLE] == 0
    assert m["llmspool:queue_depth", {**IDLE, "queue": "requests"}] == 0
    assert m["llmspool:workers", IDLE] == 0

    address = observed.redis.client().hget(_worker_key(observed), "metrics")
    targets = httpx.get(f"{observed.base_url}/admin/metrics/targets", timeout=10).json()
    assert targets == [{"targets": [address], "labels": {"model_name": "fake"}}]
    w = scrape(f"http://{address}/metrics")
    assert (
        w["llmspool:reply_frames_published_total", M] == m["llmspool:reply_frames_relayed_total", M]
    )
    assert w["llmspool:reply_tokens_published_total", M] == generated
    assert w["llmspool:worker_jobs_total", {**M, "outcome": "length"}] == 6
    assert w["llmspool:worker_jobs_total", {**M, "outcome": "stop"}] == 1
    assert w["llmspool:worker_job_seconds_count", M] == 7
    assert w["llmspool:worker_jobs_running", M] == 0

    exposed = exposed_names(httpx.get(api, timeout=10).text)
    exposed |= exposed_names(httpx.get(f"http://{address}/metrics", timeout=10).text)
    assert not referenced_metrics() - exposed, "the dashboards use metrics /metrics lacks"

    _check_request_log(observed, sent)
    _check_logs_follow_request(observed, next(iter(sent)))


def _worker_key(stack: Stack) -> str:
    names = stack.redis.client().keys(keys.worker_pattern())
    assert len(names) == 1
    return str(names[0])


def _records(stack: Stack) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.base_url}/admin/requests?limit=100", timeout=10)
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def _jsonl(stack: Stack) -> list[dict[str, Any]]:
    path = stack.workdir / "requests.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _check_request_log(stack: Stack, sent: dict[str, dict[str, object]]) -> None:
    wait_until(lambda: len(_records(stack)) >= 8, 20, what="8 request-log records")
    wait_until(lambda: len(_jsonl(stack)) >= 8, 20, what="8 JSONL records")
    records = _records(stack)
    assert len(records) == 8 and len({r["request_id"] for r in records}) == 8
    by_id = {r["request_id"]: r for r in records}
    for request_id, expected in sent.items():
        if request_id == "embedding":
            continue
        record = by_id[request_id]
        usage = expected["usage"]
        assert record["outcome"] == expected["outcome"] and record["model"] == "fake"
        assert record["output"] == expected["output"]
        assert record["prompt_tokens"] == usage.prompt_tokens  # type: ignore[attr-defined]
        assert record["completion_tokens"] == usage.completion_tokens  # type: ignore[attr-defined]
        assert record["worker"].startswith("fake@") and record["backend"] == "fake"
        assert record["queue_time"] >= 0 and record["ttft"] <= record["total_time"]
        assert record["params"]["max_tokens"] and record["prompt"]
    refused = [r for r in records if r["outcome"] == "unsupported_parameter"]
    assert len(refused) == 1 and refused[0]["worker"] is None

    target = next(iter(sent))
    answer = httpx.post(
        f"{stack.base_url}/v1/feedback",
        json={"request_id": target, "rating": 1, "comment": "good"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    one = httpx.get(f"{stack.base_url}/admin/requests/{target}", timeout=10).json()
    assert one["feedback"]["rating"] == 1 and one["feedback"]["comment"] == "good"
    assert httpx.get(f"{stack.base_url}/admin/requests/nope", timeout=10).status_code == 404

    lines = _jsonl(stack)
    assert len([x for x in lines if "request_id" in x and "outcome" in x]) == 8
    assert [x["feedback"]["request_id"] for x in lines if "feedback" in x] == [target]

    out = subprocess.run(
        [sys.executable, "-m", "llmspool", "log", "--json", "-n", "3", "--outcome", "length"],
        env=stack.env(), capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    shown = [json.loads(line) for line in out.splitlines()]
    assert len(shown) == 3 and all(r["outcome"] == "length" for r in shown)
    wide = {**stack.env(), "COLUMNS": "300"}
    table = subprocess.run(
        [sys.executable, "-m", "llmspool", "log"],
        env=wide, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "+1 good" in table


def _check_logs_follow_request(stack: Stack, request_id: str) -> None:
    def lines(name: str) -> list[dict[str, object]]:
        out = []
        for line in stack.log(name).splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    api = [x for x in lines("api.log") if x["request_id"] == request_id]
    worker = [x for x in lines("worker-fake.log") if x["request_id"] == request_id]
    assert any(x["message"].startswith("request finished") for x in api)  # type: ignore[union-attr]
    assert any(x["message"].startswith("job settled") for x in worker)  # type: ignore[union-attr]


def test_client_going_away_is_an_abort(observed: Stack) -> None:
    client = openai.OpenAI(base_url=f"{observed.base_url}/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(model="fake", messages=HI, max_tokens=2000, stream=True)
    request_id = ""
    for i, chunk in enumerate(stream):
        request_id = chunk.id
        if i == 3:
            break
    stream.close()
    api = f"{observed.base_url}/metrics"
    abort = ("llmspool:request_success_total", {**M, "finished_reason": "abort"})
    wait_until(lambda: scrape(api).get(abort) == 1, 20, what="an abort in /metrics")
    m = scrape(api)
    assert m["llmspool:num_requests_running", M] == 0
    assert m["llmspool:num_requests_waiting", M] == 0
    assert m["llmspool:e2e_request_latency_seconds_count", M] == 0
    wait_until(lambda: len(_records(observed)) == 1, 20, what="the aborted request's record")
    (record,) = _records(observed)
    assert record["request_id"] == request_id and record["outcome"] == "abort"
    address = observed.redis.client().hget(_worker_key(observed), "metrics")
    cancelled = ("llmspool:worker_jobs_total", {**M, "outcome": "cancelled"})
    wait_until(
        lambda: scrape(f"http://{address}/metrics").get(cancelled) == 1,
        30, what="the worker's cancelled job",
    )  # fmt: skip


def test_a_request_nobody_serves(observed: Stack) -> None:
    client = openai.OpenAI(base_url=f"{observed.base_url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="idle", messages=HI, max_tokens=2)
    assert caught.value.status_code == 504
    m = scrape(f"{observed.base_url}/metrics")
    queue = {**IDLE, "queue": "requests"}
    assert m["llmspool:request_errors_total", {**IDLE, "error_type": "deadline_exceeded"}] == 1
    assert m["llmspool:num_requests_waiting", IDLE] == 0
    assert m["llmspool:queue_lag", queue] == m["llmspool:queue_depth", queue] == 1
    assert m["llmspool:queue_oldest_age_seconds", queue] >= 1
    assert m["llmspool:e2e_request_latency_seconds_count", IDLE] == 0
    wait_until(lambda: len(_records(observed)) == 1, 20, what="the expired request's record")
    (record,) = _records(observed)
    assert record["outcome"] == "deadline_exceeded" and record["worker"] is None
    assert "deadline" in record["error"]
