"""examples/two-models.toml end to end: two models on two backends behind one API."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.llama]

EXAMPLE = Path(__file__).parent.parent / "examples" / "two-models.toml"
HI = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_example_serves_both_models_side_by_side(stack_factory: StackFactory) -> None:
    stack = stack_factory(EXAMPLE.read_text())
    stack.start_api()
    cards = httpx.get(f"{stack.base_url}/v1/models", timeout=10).json()["data"]
    assert [(c["id"], c["llmspool"]["workers"]) for c in cards] == [
        ("gemma-3-270m", 0),
        ("fake", 0),
    ]
    stack.start_worker("gemma-3-270m")
    stack.start_worker("fake")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)

    cards = {m.id: m.model_extra for m in client.models.list()}
    listed = {name: card["llmspool"] for name, card in cards.items()}  # type: ignore[index]
    gemma = listed["gemma-3-270m"]
    assert {k: gemma[k] for k in ("backend", "capabilities", "workers", "status")} == {
        "backend": "llama_cpp",
        "capabilities": ["chat", "completion", "embedding"],
        "workers": 1,
        "status": "online",
    }
    assert cards["gemma-3-270m"]["max_model_len"] == 2048  # type: ignore[index]  # llama.cpp's n_ctx
    assert listed["fake"]["backend"] == "fake" and listed["fake"]["workers"] == 1

    for model in ("gemma-3-270m", "fake"):
        reply = client.chat.completions.create(
            model=model, messages=HI, max_tokens=5, temperature=0
        )
        assert reply.model == model and reply.choices[0].finish_reason in ("stop", "length")

    vectors = client.embeddings.create(model="gemma-3-270m", input=["one", "two"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 640
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="fake", input="one")
    assert refused.value.code == "unsupported_capability"
    assert "does not serve embedding" in refused.value.message
