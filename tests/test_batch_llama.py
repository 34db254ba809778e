"""A batch on the real default model: gemma-3-270m on llama.cpp, a few lines, few tokens."""

from __future__ import annotations

import openai
import pytest

from tests.batch_helpers import chat_lines, once_each, outcome, submit, wait_status
from tests.conftest import StackFactory

pytestmark = [pytest.mark.llama, pytest.mark.e2e, pytest.mark.batch]

GEMMA = (
    '[[models]]\nname = "gemma-3-270m"\nbackend = "llama_cpp"\n[models.options]\nn_threads = 2\n'
)


def test_batch_on_gemma(stack_factory: StackFactory) -> None:
    stack = stack_factory(GEMMA, LLMSPOOL_BATCH_SWEEP_SECONDS="1")
    stack.start_api()
    stack.start_worker("gemma-3-270m")
    stack.start_batch_worker()
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    batch = wait_status(client, submit(client, chat_lines(4, "gemma-3-270m", 4)).id)
    assert batch.status == "completed", batch
    good, errors = outcome(client, batch)
    assert errors == [] and set(once_each(good)) == {f"req-{i}" for i in range(4)}
    for line in good:
        body = line["response"]["body"]
        assert body["model"] == "gemma-3-270m" and 0 < body["usage"]["completion_tokens"] <= 4
        assert isinstance(body["choices"][0]["message"]["content"], str)  # sampled: may be blank
    # an interactive request is served while (or after) the batch ran, on the one-slot worker
    reply = client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert reply.choices[0].message.content is not None
