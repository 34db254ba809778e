"""Building batch input files and checking batch outcomes in tests."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
from openai.types import Batch

FINAL = {"completed", "failed", "expired", "cancelled"}


def chat_lines(count: int, model: str = "fake", max_tokens: int = 4, start: int = 0) -> list[str]:
    return [
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Hello {i}"}],
                    "max_tokens": max_tokens,
                },
            }
        )
        for i in range(start, start + count)
    ]


def submit(
    client: openai.OpenAI, lines: list[str], endpoint: str = "/v1/chat/completions"
) -> Batch:
    uploaded = client.files.create(
        file=("input.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
    )
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"test": "yes"},
    )


def wait_status(
    client: openai.OpenAI, batch_id: str, statuses: set[str] = FINAL, timeout: float = 120
) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            batch = client.batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.InternalServerError):
            time.sleep(0.2)  # the API is being restarted
            continue
        if batch.status in statuses:
            return batch
        time.sleep(0.1)
    raise TimeoutError(f"batch {batch_id} still {batch.status}: {batch.request_counts}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def outcome(
    client: openai.OpenAI, batch: Batch
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The output and error lines of a finished batch."""
    return jsonl(client, batch.output_file_id), jsonl(client, batch.error_file_id)


def once_each(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lines by custom_id, checking that no custom_id appears twice."""
    ids = [line["custom_id"] for line in lines]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise AssertionError(f"custom_ids with more than one result: {sorted(duplicates)[:10]}")
    return {line["custom_id"]: line for line in lines}
