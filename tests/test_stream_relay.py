"""The streamed reply path under load: batched writes keep every token in order, and the
per-request deadline timer ends a stream that no worker serves."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import StackFactory

pytestmark = pytest.mark.e2e

FAST = """
[[models]]
name = "fast"
backend = "fake"
max_concurrency = 64
context_length = 4096
"""


def _events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def _streamed_text(base_url: str, body: dict[str, object]) -> tuple[str, list[str]]:
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as response:
        assert response.status_code == 200
        events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, events


def test_a_zero_delay_stream_arrives_whole_and_in_order(stack_factory: StackFactory) -> None:
    stack = stack_factory(FAST)
    stack.start_api()
    stack.start_worker("fast")
    body = {
        "model": "fast",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 2000,
        "seed": 3,
    }
    whole = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=60).json()
    text, events = _streamed_text(stack.base_url, body)
    assert text == whole["choices"][0]["message"]["content"]
    assert len(text.split()) == 2000
    finish = [json.loads(e)["choices"][0]["finish_reason"] for e in events[1:-1]]
    assert finish[-1] == "length"


def test_a_stream_nobody_serves_ends_with_a_deadline_error(stack_factory: StackFactory) -> None:
    stack = stack_factory('[[models]]\nname = "idle"\nbackend = "fake"\ntimeout = 1\n')
    stack.start_api()
    body = {"model": "idle", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        events = _events(response)
    error = json.loads(events[-1])["error"]
    assert error["code"] == "deadline_exceeded"
