"""Bounds on what a client may send: body size (413), messages and prompt length (400)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def small_stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The API alone (nothing here reaches a worker), with small limits."""
    stack = module_stack(
        redis_server,
        tmp_path_factory.mktemp("limits"),
        LLMSPOOL_MAX_BODY_BYTES="4096",
        LLMSPOOL_MAX_MESSAGES="3",
        LLMSPOOL_MAX_PROMPT_CHARS="100",
    )
    stack.start_api()
    yield stack
    stack.stop()


def post(stack: Stack, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_body_too_large_by_content_length(small_stack: Stack) -> None:
    body = {"model": "fake", "prompt": "x" * 5000}
    error = error_of(post(small_stack, "/v1/completions", json=body), 413)
    assert error["code"] == "payload_too_large"


def test_batch_file_upload_has_its_own_bound(small_stack: Stack) -> None:
    """A batch input file is bounded by LLMSPOOL_BATCH_MAX_FILE_BYTES, not the body limit."""
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n'
    files = {"file": ("in.jsonl", line * 100, "application/jsonl")}
    response = post(small_stack, "/v1/files", data={"purpose": "batch"}, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(line) * 100


def test_body_too_large_chunked(small_stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fake", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = post(
        small_stack,
        "/v1/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert error_of(response, 413)["code"] == "payload_too_large"


def test_too_many_messages_and_too_long_prompts(small_stack: Stack) -> None:
    many = [{"role": "user", "content": "hi"}] * 4
    error = error_of(
        post(small_stack, "/v1/chat/completions", json={"model": "fake", "messages": many}), 400
    )
    assert error["param"] == "messages" and error["code"] == "array_above_max_length"
    long = [{"role": "user", "content": "x" * 101}]
    error = error_of(
        post(small_stack, "/v1/chat/completions", json={"model": "fake", "messages": long}), 400
    )
    assert error["code"] == "string_above_max_length"
    error = error_of(
        post(small_stack, "/v1/completions", json={"model": "fake", "prompt": "y" * 101}), 400
    )
    assert error["param"] == "prompt"
    error = error_of(
        post(small_stack, "/v1/embeddings", json={"model": "fake", "input": ["z" * 60] * 2}), 400
    )
    assert error["param"] == "input"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "fake", "prompt": "x", "max_tokens": 1e400}',
        b'{"model": "fake", "prompt": "x", "temperature": NaN}',
        b'{"model": "fake", "prompt": "x", "seed": 123456789012345678901234567890}',
        b"[" * 5000 + b"]" * 5000,
        b'{"model": "fake", "prompt": "\\ud800"}',
        b'{"model": "\\u0000", "prompt": "x"}',
    ],
)
def test_hostile_json_is_a_4xx(small_stack: Stack, body: bytes) -> None:
    response = post(
        small_stack, "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert httpx.get(f"{small_stack.base_url}/health").status_code == 200
