"""The Batch API end to end: the official openai client, the real API, workers and batch
worker, on the fake engine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types import Batch

from llmspool.shared import keys
from tests.batch_helpers import chat_lines, once_each, outcome, submit, wait_status
from tests.conftest import StackFactory
from tests.helpers import RedisServer, Stack, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.batch]

HI = [{"role": "user", "content": "Hi"}]
BATCH_ENV = {"LLMSPOOL_BATCH_SWEEP_SECONDS": "1", "LLMSPOOL_LEASE": "2"}


@pytest.fixture
def batch_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    stack = stack_factory(**BATCH_ENV)
    stack.start_api()
    stack.start_worker("fake")
    stack.start_batch_worker()
    yield stack


@pytest.fixture
def bclient(batch_stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{batch_stack.base_url}/v1", api_key="none", max_retries=0)


def test_a_batch_of_300_lines_completes_once_each(
    bclient: openai.OpenAI, batch_stack: Stack
) -> None:
    bad = [
        "{not json",
        json.dumps(
            {
                "custom_id": "bad-body",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "fake", "messages": []},
            }
        ),
        json.dumps(
            {
                "custom_id": "bad-model",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            }
        ),
    ]
    lines = chat_lines(150) + bad + chat_lines(150, start=150)
    created = submit(bclient, lines)
    assert created.status == "validating" and created.object == "batch"
    assert created.metadata == {"test": "yes"} and created.completion_window == "24h"
    batch = wait_status(bclient, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (303, 300)
    assert batch.request_counts.failed == 3
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    good, errors = outcome(bclient, batch)
    by_id = once_each(good)
    assert set(by_id) == {f"req-{i}" for i in range(300)}
    reply = by_id["req-7"]["response"]
    assert reply["status_code"] == 200
    assert reply["body"]["object"] == "chat.completion"
    assert len(reply["body"]["choices"][0]["message"]["content"].split()) == 4
    failed = {line["custom_id"]: line for line in errors}
    assert set(failed) == {None, "bad-body", "bad-model"}
    assert failed[None]["error"]["code"] == "invalid_json"
    assert failed["bad-body"]["response"]["status_code"] == 400
    assert failed["bad-model"]["response"]["status_code"] == 404
    assert batch.usage is not None and batch.usage.output_tokens == 1200
    assert bclient.batches.list().data[0].id == batch.id
    assert batch_stack.redis.cli("HLEN", keys.batch_results(batch.id)).strip() == "303"


SLOW_CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 2
[models.options]
ttft_ms = 20
itl_ms = 40
"""


@pytest.fixture
def slow_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    """One worker, two slots, ~0.3 s a line: a batch that takes a while."""
    stack = stack_factory(SLOW_CONFIG, **BATCH_ENV)
    stack.start_api()
    stack.start_worker("fake")
    stack.start_batch_worker()
    yield stack


def _client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)


def _wait_done(client: openai.OpenAI, batch_id: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = client.batches.retrieve(batch_id).request_counts
        if counts is not None and counts.completed >= at_least:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {at_least} lines of {batch_id} completed")


def test_cancel_stops_dispatching_and_keeps_finished(slow_stack: Stack) -> None:
    client = _client(slow_stack)
    created = submit(client, chat_lines(40, max_tokens=8))
    _wait_done(client, created.id, 4)
    # interactive work goes first: served while the batch is still far from done
    reply = client.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert client.batches.retrieve(created.id).status == "in_progress"
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_status(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at and batch.cancelling_at
    good, errors = outcome(client, batch)
    assert batch.request_counts is not None
    assert len(good) == batch.request_counts.completed >= 4
    assert len(good) < 40
    everything = once_each(good + errors)
    assert set(everything) == {f"req-{i}" for i in range(40)}
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    # nothing more runs: the stream drains without work, and the results stay as they were
    redis = slow_stack.redis.client()

    def drained() -> bool:  # every entry delivered, none in flight
        stream = keys.batch_stream("fake")
        group = redis.xinfo_groups(stream)[0]
        newest = redis.xinfo_stream(stream)["last-generated-id"]
        return group["last-delivered-id"] == newest and int(group["pending"]) == 0

    wait_until(drained, 60, what="the batch stream drained")
    results = slow_stack.redis.cli("HLEN", keys.batch_results(batch.id)).strip()
    assert int(results) == batch.request_counts.completed
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(submit_and_finish(client).id)


def submit_and_finish(client: openai.OpenAI) -> Batch:
    batch = wait_status(client, submit(client, chat_lines(2, max_tokens=1)).id)
    assert batch.status == "completed"
    return batch


def test_restarts_mid_batch_give_exactly_one_result_per_line(slow_stack: Stack) -> None:
    client = _client(slow_stack)
    created = submit(client, chat_lines(60, max_tokens=6))
    _wait_done(client, created.id, 5)
    api, worker, batch_worker = slow_stack.processes[:3]
    worker.kill()  # mid-line: its lines stay pending and are reclaimed after the lease
    api.send_signal(signal.SIGTERM)
    batch_worker.kill()
    api.wait(15)
    slow_stack.start_api()
    slow_stack.start_worker("fake")
    slow_stack.start_batch_worker()
    batch = wait_status(client, created.id, timeout=120)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 60
    good, errors = outcome(client, batch)
    assert errors == []
    assert set(once_each(good)) == {f"req-{i}" for i in range(60)}


def test_expiry_reports_what_finished(stack_factory: StackFactory) -> None:
    stack = stack_factory(SLOW_CONFIG, LLMSPOOL_BATCH_WINDOW="6", **BATCH_ENV)
    stack.start_api()
    stack.start_worker("fake")
    stack.start_batch_worker(wait=True)
    client = _client(stack)
    created = submit(client, chat_lines(100, max_tokens=8))
    batch = wait_status(client, created.id, timeout=60)
    assert batch.status == "expired" and batch.expired_at
    good, errors = outcome(client, batch)
    assert batch.request_counts is not None
    assert len(good) == batch.request_counts.completed > 0
    assert set(once_each(good + errors)) == {f"req-{i}" for i in range(100)}
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_files_api_and_limits(stack_factory: StackFactory) -> None:
    stack = stack_factory(
        LLMSPOOL_BATCH_MAX_LINES="5", LLMSPOOL_BATCH_MAX_FILE_BYTES="4000", **BATCH_ENV
    )
    stack.start_api()
    stack.start_batch_worker()
    client = _client(stack)
    uploaded = client.files.create(file=("in.jsonl", b"x\n"), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.bytes == 2
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
    assert client.files.content(uploaded.id).content == b"x\n"
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("in.jsonl", b"x\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="larger than 4000 bytes"):
        client.files.create(file=("in.jsonl", b"x" * 4001), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    too_many = wait_status(client, submit(client, chat_lines(6)).id)
    assert too_many.status == "failed" and too_many.failed_at
    assert too_many.errors is not None and too_many.errors.data
    assert too_many.errors.data[0].code == "too_many_requests"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=too_many.input_file_id,
            endpoint="/v1/nope",  # type: ignore[arg-type]
            completion_window="24h",
        )


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmspool", "batch", *args, "--api", stack.base_url],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_submit_wait_download(batch_stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    bodies = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 2})
        for i in range(20)
    ]
    source.write_text("\n".join(bodies) + "\n")
    submitted = _cli(batch_stack, "submit", str(source), "--model", "fake", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[0]
    assert batch_id.startswith("batch_") and "completed" in submitted.stdout
    target = tmp_path / "out.jsonl"
    assert _cli(batch_stack, "download", batch_id, "-o", str(target)).returncode == 0
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert set(once_each(lines)) == {f"line-{i}" for i in range(1, 21)}
    listed = _cli(batch_stack, "list")
    assert listed.returncode == 0 and batch_id in listed.stdout
    status = _cli(batch_stack, "status", batch_id)
    assert "20 completed, 0 failed of 20" in status.stdout
    cancelled = _cli(batch_stack, "cancel", batch_id)
    assert cancelled.returncode == 1 and "Cannot cancel" in cancelled.stderr


def test_redis_restart_mid_batch_loses_no_line(tmp_path: Path) -> None:
    """kill -9 of an append-only redis-server mid-batch: every line still gets one result."""
    server = RedisServer(
        free_port(), tmp_path / "aof", extra=("--appendonly", "yes", "--appendfsync", "always")
    )
    server.start()
    config = tmp_path / "llmspool.toml"
    config.write_text(SLOW_CONFIG)
    stack = Stack(server, config, tmp_path, extra_env=BATCH_ENV)
    try:
        stack.start_api()
        stack.start_worker("fake")
        stack.start_batch_worker(wait=True)
        client = _client(stack)
        created = submit(client, chat_lines(40, max_tokens=6))
        _wait_done(client, created.id, 5)
        server.stop(signal.SIGKILL)
        server.start()
        batch = wait_status(client, created.id, timeout=120)
        assert batch.status == "completed", batch
        good, errors = outcome(client, batch)
        assert errors == [] and set(once_each(good)) == {f"req-{i}" for i in range(40)}
    finally:
        stack.stop()
        server.stop()


def test_completions_and_embeddings_batches(bclient: openai.OpenAI) -> None:
    completions = [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "fake", "prompt": f"p{i}", "max_tokens": 3},
            }
        )
        for i in range(5)
    ]
    embeddings = [
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "fake", "input": ["a b", f"c {i}"]},
            }
        )
        for i in range(5)
    ]
    done = wait_status(bclient, submit(bclient, completions, "/v1/completions").id)
    good, errors = outcome(bclient, done)
    assert done.status == "completed" and errors == [] and len(once_each(good)) == 5
    assert good[0]["response"]["body"]["object"] == "text_completion"
    assert len(good[0]["response"]["body"]["choices"][0]["text"].split()) == 3
    done = wait_status(bclient, submit(bclient, embeddings, "/v1/embeddings").id)
    good, errors = outcome(bclient, done)
    assert done.status == "completed" and errors == [] and len(once_each(good)) == 5
    body = good[0]["response"]["body"]
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    # a line whose url is not the batch's endpoint fails alone
    mixed = wait_status(
        bclient, submit(bclient, [*embeddings[:2], completions[0]], "/v1/embeddings").id
    )
    assert mixed.request_counts is not None
    assert (mixed.request_counts.completed, mixed.request_counts.failed) == (2, 1)
    _, errors = outcome(bclient, mixed)
    assert errors[0]["custom_id"] == "c0" and errors[0]["error"]["code"] == "mismatched_endpoint"


def test_a_batch_line_may_call_tools(bclient: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    lines = [
        json.dumps(
            {
                "custom_id": "t",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "fake",
                    "messages": HI,
                    "tools": [tool],
                    "tool_choice": "required",
                },
            }
        ),
        json.dumps(
            {
                "custom_id": "r",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "fake", "messages": HI, "guided_regex": "a+"},
            }
        ),
    ]
    done = wait_status(bclient, submit(bclient, lines, "/v1/chat/completions").id)
    good, errors = outcome(bclient, done)
    choice = good[0]["response"]["body"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    refused = errors[0]["response"]
    assert errors[0]["custom_id"] == "r" and refused["status_code"] == 400
    assert refused["body"]["error"]["param"] == "guided_regex"
