import time

from llmspool.consumers.backends.fake import FakeBackend, Options
from llmspool.shared.config import ModelConfig
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import ChatCompletionRequest

MODEL = ModelConfig(name="fake", backend="fake", max_concurrency=4)


def job(**extra: object) -> Job:
    body = ChatCompletionRequest.model_validate(
        {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], **extra}
    )
    return Job(
        request_id="r", kind=JobKind.CHAT, model="fake", body=body, deadline=time.time() + 60
    )


async def run(backend: FakeBackend, j: Job) -> tuple[str, list[object]]:
    deltas = [d async for d in backend.generate(j)]
    return "".join(d.text for d in deltas), deltas


async def test_emits_exactly_max_tokens() -> None:
    backend = FakeBackend(MODEL, Options())
    text, deltas = await run(backend, job(max_tokens=7))
    final = deltas[-1]
    assert final.finish_reason == "length"  # type: ignore[attr-defined]
    assert final.usage.completion_tokens == 7  # type: ignore[attr-defined]
    assert len(text.split()) == 7 and backend.tokens_generated == 7


async def test_is_deterministic_and_seed_changes_it() -> None:
    backend = FakeBackend(MODEL, Options())
    first, _ = await run(backend, job(max_tokens=10))
    again, _ = await run(backend, job(max_tokens=10))
    seeded, _ = await run(backend, job(max_tokens=10, seed=7))
    assert first == again and first != seeded


async def test_stop_sequence_ends_with_stop() -> None:
    backend = FakeBackend(MODEL, Options())
    full, _ = await run(backend, job(max_tokens=10))
    word = full.split()[3]
    text, deltas = await run(backend, job(max_tokens=10, stop=[" " + word]))
    assert deltas[-1].finish_reason == "stop"  # type: ignore[attr-defined]
    assert text == full[: full.index(" " + word)]
