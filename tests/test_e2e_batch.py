"""The Batch API end to end: the official openai client, the real API, workers and batch
worker, on the fake engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.batch_helpers import chat_lines, once_each, outcome, submit, wait_status
from tests.conftest import StackFactory
from tests.helpers import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.batch]

BATCH_ENV = {"LLMSPOOL_BATCH_SWEEP_SECONDS": "1", "LLMSPOOL_BATCH_LEASE": "2"}


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
    assert batch_stack.redis.cli("HLEN", f"llmspool:batch:{{{batch.id}}}:results").strip() == "303"
