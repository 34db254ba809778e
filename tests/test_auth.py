"""API keys, scopes and per-key limits, end to end: real API, worker, Redis and CLI."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis

from llmspool.shared import credentials, keys
from llmspool.shared.settings import Settings
from tests.batch_helpers import wait_status
from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def keyed_stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One API (keys on) and one worker for the whole module; each test makes its own keys."""
    stack = module_stack(redis_server, tmp_path_factory.mktemp("keyed"), LLMSPOOL_AUTH="on")
    stack.start_api()
    stack.start_worker("fake")
    yield stack
    stack.stop()


def new_key(stack: Stack, *args: str) -> str:
    """A key made by the real command line (`llmspool keys create`)."""
    return stack.cli("keys", "create", *args).strip()


def quick_key(stack: Stack, **fields: Any) -> str:
    """A key made in-process (the command line costs a Python start per call)."""

    async def create() -> str:
        client = Redis.from_url(stack.redis.url)
        try:
            return (await credentials.create(client, **fields))[0]
        finally:
            await client.aclose()

    return asyncio.run(create())


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def get(stack: Stack, path: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{stack.base_url}{path}", headers=headers, timeout=30)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


def test_auto_is_off_on_loopback_only() -> None:
    assert not Settings(host="127.0.0.1").auth_enabled()
    assert Settings(host="0.0.0.0").auth_enabled()
    assert Settings(host="127.0.0.1", auth="on").auth_enabled()
    assert not Settings(host="0.0.0.0", auth="off").auth_enabled()


def test_keys_scopes_and_revocation(keyed_stack: Stack) -> None:
    stack = keyed_stack
    assert get(stack, "/health").status_code == 200
    missing = get(stack, "/v1/models")
    assert_openai_error(missing, 401, "missing_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_openai_error(get(stack, "/v1/models", "sk-llmspool-wrong"), 401, "invalid_api_key")

    user = new_key(stack, "--name", "alice")
    admin = quick_key(stack, scope="admin")
    reply = client(stack, user).chat.completions.create(model="fake", messages=HI, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert_openai_error(get(stack, "/admin/anything", user), 403, "permission_denied")
    assert get(stack, "/admin/anything", admin).status_code == 404  # past the door

    # Redis holds digests only, never a key
    dump = stack.redis.cli("--scan", "--pattern", f"{keys.AUTH_PREFIX}:*")
    assert user not in dump and admin not in dump
    listed = stack.cli("keys", "list")
    assert "alice" in listed and user not in listed
    records = [json.loads(line) for line in stack.cli("keys", "list", "--json").splitlines()]
    user_id = next(r["id"] for r in records if r["name"] == "alice")
    stack.cli("keys", "revoke", user_id)
    with pytest.raises(openai.AuthenticationError):
        client(stack, user).models.list()
    with pytest.raises(RuntimeError):
        stack.cli("keys", "revoke", user_id)


def test_allowed_models(keyed_stack: Stack) -> None:
    key = quick_key(keyed_stack, models=("other",))
    api = client(keyed_stack, key)
    assert [m.id for m in api.models.list()] == []
    with pytest.raises(openai.PermissionDeniedError) as caught:
        api.chat.completions.create(model="fake", messages=HI, max_tokens=2)
    assert caught.value.code == "model_not_allowed"


def test_requests_per_minute(keyed_stack: Stack) -> None:
    api = client(keyed_stack, quick_key(keyed_stack, rpm=2))
    api.models.list()
    api.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        api.models.list()
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_tokens_per_minute(keyed_stack: Stack) -> None:
    api = client(keyed_stack, quick_key(keyed_stack, tpm=10))
    api.chat.completions.create(model="fake", messages=HI, max_tokens=19)  # 20 tokens: in debt
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat.completions.create(model="fake", messages=HI, max_tokens=1)
    assert "tokens" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) >= 60  # 11 tokens at 10/min


def test_concurrent_requests_across_replicas(keyed_stack: Stack) -> None:
    key = quick_key(keyed_stack, concurrency=1)
    second = Stack(
        keyed_stack.redis,
        keyed_stack.config,
        keyed_stack.workdir,
        extra_env={"LLMSPOOL_AUTH": "on"},
    )
    second.start_api()
    try:
        body = {"model": "fake", "messages": HI, "max_tokens": 2000, "stream": True}
        headers = {"authorization": f"Bearer {key}"}
        url = f"{keyed_stack.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as held:
            lines = held.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # the first stream is open and counted
            with pytest.raises(openai.RateLimitError):
                client(second, key).models.list()  # the other replica sees the slot taken
        api = client(second, key)
        _eventually(lambda: api.models.list())
    finally:
        second.stop()


def _eventually(call) -> None:  # type: ignore[no-untyped-def]
    for _ in range(100):
        try:
            call()
            return
        except openai.RateLimitError:
            time.sleep(0.1)
    call()


def test_files_and_batches_belong_to_their_key(keyed_stack: Stack) -> None:
    """Another key neither lists nor reads, cancels or deletes them; the admin key sees all."""
    owner, other, admin = (
        quick_key(keyed_stack),
        quick_key(keyed_stack),
        quick_key(keyed_stack, scope="admin"),
    )
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake", "messages": HI, "max_tokens": 2},
    }
    mine = client(keyed_stack, owner)
    uploaded = mine.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
    theirs = client(keyed_stack, other)
    with pytest.raises(openai.NotFoundError):  # not even as a batch's input
        theirs.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    batch = mine.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    assert uploaded.id in {f.id for f in mine.files.list()}
    assert batch.id in {b.id for b in mine.batches.list()}
    assert uploaded.id not in {f.id for f in theirs.files.list()}
    assert batch.id not in {b.id for b in theirs.batches.list()}
    for path in (f"/v1/files/{uploaded.id}", f"/v1/files/{uploaded.id}/content"):
        assert_openai_error(get(keyed_stack, path, other), 404, "not_found")
    assert_openai_error(get(keyed_stack, f"/v1/batches/{batch.id}", other), 404, "not_found")
    with pytest.raises(openai.NotFoundError):
        theirs.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.delete(uploaded.id)

    seer = client(keyed_stack, admin)
    assert seer.batches.retrieve(batch.id).id == batch.id
    assert uploaded.id in {f.id for f in seer.files.list()}
    assert mine.files.retrieve(uploaded.id).id == uploaded.id  # still there for its owner

    # the batch's output file belongs to the batch's key too
    keyed_stack.start_batch_worker(wait=True)
    done = wait_status(mine, batch.id)
    assert done.status == "completed" and done.output_file_id, done
    assert json.loads(mine.files.content(done.output_file_id).text)["custom_id"] == "a"
    path = f"/v1/files/{done.output_file_id}/content"
    assert_openai_error(get(keyed_stack, path, other), 404, "not_found")


def test_stored_responses_belong_to_their_key(keyed_stack: Stack) -> None:
    """Another key can neither read, delete nor continue a response; the admin key reads it."""
    mine = client(keyed_stack, quick_key(keyed_stack))
    theirs = client(keyed_stack, quick_key(keyed_stack))
    seer = client(keyed_stack, quick_key(keyed_stack, scope="admin"))
    response = mine.responses.create(model="fake", input="Hi", max_output_tokens=3)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="fake", input="x", previous_response_id=response.id)
    assert seer.responses.retrieve(response.id).id == response.id
    follow_up = mine.responses.create(
        model="fake", input="again", previous_response_id=response.id, max_output_tokens=2
    )
    assert follow_up.previous_response_id == response.id
