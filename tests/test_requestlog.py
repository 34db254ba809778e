"""The request log on a real redis-server: privacy switches, capping, feedback joined on read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llmspool.shared import keys, requestlog
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import ChatCompletionRequest
from llmspool.shared.requestlog import Feedback, RequestLog, RequestRecord, request_parts
from llmspool.shared.settings import Settings
from tests.helpers import RedisServer, async_wait_until


@pytest.fixture
async def redis(clean_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(clean_redis.url)
    yield client
    await client.aclose()


def _record(i: int, model: str = "m", outcome: str = "stop") -> RequestRecord:
    return RequestRecord(
        request_id=f"chatcmpl-{i}",
        time=1.0 + i,
        model=model,
        kind="chat",
        params={"max_tokens": 5, "temperature": 0.0},
        prompt=[{"role": "user", "content": "secret " * 10}],
        output="answer " * 10,
        outcome=outcome,
    )


def test_request_parts_split_content_from_parameters() -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    )
    params, prompt = request_parts(body)
    assert params == {"max_tokens": 3, "stream": False}
    assert prompt == [{"role": "user", "content": "Hi"}]
    job = Job(request_id="x", kind=JobKind.CHAT, model="m", body=body, deadline=0)
    assert job.body is body


async def test_privacy_switches_and_truncation(redis: Redis) -> None:
    settings = Settings(request_log_prompts=False, request_log_max_chars=12)
    await RequestLog(redis, settings).write(_record(1))
    (stored,) = await requestlog.recent(redis)
    assert stored.prompt is None and stored.output == "answer answe"
    assert stored.params == {"max_tokens": 5, "temperature": 0.0}
    off = Settings(request_log_outputs=False)
    assert not RequestLog(redis, off).keeps_output


async def test_capped_filtered_newest_first_with_feedback(redis: Redis) -> None:
    log = RequestLog(redis, Settings(request_log_max=50))
    for i in range(300):
        await log.write(
            _record(i, model="a" if i % 2 else "b", outcome="length" if i % 3 else "stop")
        )
    assert await redis.xlen(keys.REQUEST_LOG) < 300  # MAXLEN ~ trims in whole nodes
    newest = await requestlog.recent(redis, 5)
    assert [r.request_id for r in newest] == [f"chatcmpl-{i}" for i in range(299, 294, -1)]
    only = await requestlog.recent(redis, 4, model="a", outcome="stop")
    assert [r.request_id for r in only] == [
        "chatcmpl-297",
        "chatcmpl-291",
        "chatcmpl-285",
        "chatcmpl-279",
    ]
    await log.add_feedback(Feedback(request_id="chatcmpl-298", rating=-1, comment="wrong"))
    await log.add_feedback(Feedback(request_id="chatcmpl-298", rating=1))
    found = await requestlog.find(redis, "chatcmpl-298")
    assert found is not None and found.feedback is not None
    assert found.feedback.rating == 1 and found.feedback.comment is None  # the latest wins
    assert 0 < await redis.ttl(keys.feedback("chatcmpl-298")) <= 30 * 86400
    assert await requestlog.find(redis, "chatcmpl-0") is None  # trimmed away


async def test_follow_yields_new_records(redis: Redis) -> None:
    log = RequestLog(redis, Settings())
    await log.write(_record(1))  # older: not followed
    records = requestlog.follow(redis, block_ms=100)
    first = asyncio.ensure_future(anext(records))
    # follow() has read the newest entry once its XREAD blocks; what comes after is followed
    await async_wait_until(lambda: _blocked_clients(redis), what="follow's XREAD")
    await log.write(_record(2))
    record = await asyncio.wait_for(first, 10)
    assert record.request_id == "chatcmpl-2" and record.entry_id
    await records.aclose()  # type: ignore[attr-defined]


async def _blocked_clients(redis: Redis) -> bool:
    return any("b" in client["flags"] for client in await redis.client_list())
