"""The console's timeline: tallies flushed to a capped Redis stream, read back in buckets."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from llmspool.producer.timeline import Timeline, read_series
from llmspool.shared import keys
from llmspool.shared.messages import Job, JobKind, ReplyFrame, WireError
from llmspool.shared.protocol import ChatCompletionRequest, EmbeddingRequest, Usage
from tests.helpers import RedisServer


def _job(kind: JobKind = JobKind.CHAT, age: float = 0.2) -> Job:
    body = (
        EmbeddingRequest(model="m", input="x")
        if kind is JobKind.EMBEDDING
        else ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    )
    now = time.time()
    return Job(
        request_id="r", kind=kind, model="m", body=body, enqueued_at=now - age, deadline=now + 60
    )


def _final(tokens: int, error: bool = False) -> ReplyFrame:
    return ReplyFrame(
        request_id="r",
        seq=2,
        finish_reason=None if error else "length",
        usage=None
        if error
        else Usage(prompt_tokens=1, completion_tokens=tokens, total_tokens=tokens + 1),
        error=WireError(message="boom") if error else None,
    )


async def test_timeline_sums_processes_into_buckets(clean_redis: RedisServer) -> None:
    redis = Redis.from_url(clean_redis.url)
    try:
        first, second = Timeline(redis), Timeline(redis)
        first.observe(_job(age=0.2), ReplyFrame(request_id="r", seq=1, text="a"), first=True)
        first.observe(_job(), _final(10), first=False)
        second.observe(_job(age=0.4), _final(20), first=True)
        second.observe(_job(JobKind.EMBEDDING), _final(0, error=True), first=True)
        await first.flush()
        await second.flush()
        await first.flush()  # nothing new: writes nothing
        assert await redis.xlen(keys.timeline("m")) == 2

        assert (await read_series(redis, "m", window=30, step=3)).ttft_ms[-1] is None  # open
        series = await read_series(redis, "m", window=30, step=3, now=time.time() + 3)
        assert len(series.ttft_ms) == 10 and series.start <= time.time()
        bucket = next(i for i, v in enumerate(series.ttft_ms) if v is not None)
        assert 200 <= (series.ttft_ms[bucket] or 0) < 1000  # mean of ~0.2 s and ~0.4 s
        assert sum(series.tokens_per_s) * 3 == 30
        assert sum(series.requests_per_s) * 3 == 3
        assert sum(series.errors) == 1
        assert (await read_series(redis, "other")).ttft_ms == [None] * 60
    finally:
        await redis.aclose()
