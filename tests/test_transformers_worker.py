"""A transformers worker process behind the API: concurrent streamed requests decoded together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from tests.conftest import StackFactory
from tests.engines import SPECS

pytestmark = [pytest.mark.e2e, pytest.mark.torch]

CONFIG = """
[[models]]
name = "tiny"
backend = "transformers"
max_concurrency = 4
[models.options]
model = "{path}"
"""
TOKENS = 24


async def _stream(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None, int]:
    stream = await client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": f"count to {i}"}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, tokens = [], None, 0
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(text), finish, tokens


async def _concurrently(base_url: str, n: int) -> list[tuple[str, str | None, int]]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    async with client:
        return await asyncio.gather(*(_stream(client, i) for i in range(n)))


def test_a_batching_worker_streams_concurrent_requests(
    stack_factory: StackFactory, tiny_llama: Path
) -> None:
    missing = SPECS["transformers"].missing()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    stack = stack_factory(CONFIG.format(path=tiny_llama), OMP_NUM_THREADS="1")
    stack.start_api()
    stack.start_worker("tiny")
    together = asyncio.run(_concurrently(stack.base_url, 4))
    (alone,) = asyncio.run(_concurrently(stack.base_url, 1))
    for text, finish, tokens in together:
        assert text and finish == "length" and tokens == TOKENS
    assert together[0] == alone  # greedy: the same text batched and alone
