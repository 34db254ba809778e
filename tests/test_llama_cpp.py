"""The real llama.cpp backend on the packaged gemma-3-270m."""

from __future__ import annotations

import base64
import struct
import time

import openai
import pytest
import pytest_asyncio

from llmspool.consumers.backends.base import Prompt
from llmspool.consumers.backends.llama_cpp import LlamaCppBackend, Options, request_error
from llmspool.shared.config import default_config
from llmspool.shared.errors import InvalidRequest
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import ChatCompletionRequest, ChatMessage
from llmspool.shared.settings import Settings
from tests.conftest import StackFactory

pytestmark = pytest.mark.llama

GEMMA = default_config().model("gemma-3-270m")
HI = [{"role": "user", "content": "What is the capital of France?"}]
START_OF_TURN, END_OF_TURN = 105, 106


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> LlamaCppBackend:
    engine = LlamaCppBackend(GEMMA, Options(n_threads=2), Settings())
    await engine.start()
    return engine


def chat_job(**extra: object) -> Job:
    body = ChatCompletionRequest.model_validate({"model": GEMMA.name, "messages": HI, **extra})
    return Job(
        request_id="r", kind=JobKind.CHAT, model=GEMMA.name, body=body, deadline=time.time() + 60
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_engine_sees_the_gemma_turn_template(backend: LlamaCppBackend) -> None:
    prompt = Prompt(
        messages=(
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hi"),
        )
    )
    assert backend.render(prompt) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    tokens = backend.prompt_ids(prompt)
    assert tokens[0] == 2  # <bos>
    assert tokens.count(START_OF_TURN) == 2 and tokens.count(END_OF_TURN) == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_generates_text_deterministically_with_seed(backend: LlamaCppBackend) -> None:
    async def text() -> tuple[str, object]:
        deltas = [d async for d in backend.generate(chat_job(max_tokens=8, temperature=0, seed=1))]
        return "".join(d.text for d in deltas), deltas[-1]

    first, final = await text()
    again, _ = await text()
    assert first.strip() and first == again
    assert final.usage.completion_tokens <= 8  # type: ignore[attr-defined]


@pytest.mark.asyncio(loop_scope="module")
async def test_cancelling_stops_within_a_token(backend: LlamaCppBackend) -> None:
    stream = backend.generate(chat_job(max_tokens=200, temperature=0))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    deltas = [d async for d in backend.generate(chat_job(max_tokens=3, temperature=0))]
    assert deltas[-1].finish_reason is not None  # the engine is ready for the next job


@pytest.mark.e2e
def test_openai_client_through_redis(stack_factory: StackFactory) -> None:
    stack = stack_factory(
        '[[models]]\nname = "gemma-3-270m"\nbackend = "llama_cpp"\n'
        'capabilities = ["chat", "completion", "embedding"]\n'
        "[models.options]\nn_threads = 2\n"
    )
    stack.start_api()
    stack.start_worker("gemma-3-270m")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="gemma-3-270m", messages=HI, stream=True, max_tokens=12, temperature=0, seed=1
        )
    )
    whole = client.chat.completions.create(
        model="gemma-3-270m", messages=HI, max_tokens=12, temperature=0, seed=1
    )
    assert streamed.strip() and streamed == whole.choices[0].message.content
    assert whole.usage.prompt_tokens > 5 and 0 < whole.usage.completion_tokens <= 12
    completion = client.completions.create(
        model="gemma-3-270m", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text.strip() and completion.choices[0].finish_reason in (
        "length",
        "stop",
    )
    embedded = client.embeddings.create(model="gemma-3-270m", input=["a red fox", "a blue sea"])
    assert [d.index for d in embedded.data] == [0, 1]
    assert len(embedded.data[0].embedding) == 640  # gemma-3-270m's hidden size, mean-pooled
    assert embedded.usage.prompt_tokens > 0
    b64 = client.embeddings.create(
        model="gemma-3-270m", input="a red fox", encoding_format="base64"
    )
    raw = base64.b64decode(b64.data[0].embedding)  # type: ignore[arg-type]
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(
        embedded.data[0].embedding, abs=1e-5
    )


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Requested tokens (3000) exceed context window of 2048", "context_length_exceeded"),
        ("something else the engine refused", None),
    ],
)
def test_the_engines_value_errors_are_request_errors(message: str, code: str | None) -> None:
    error = request_error(ValueError(message), chat=True)
    assert isinstance(error, InvalidRequest) and error.code == code and error.status_code == 400
