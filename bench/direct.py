"""Baseline (A): a minimal OpenAI-compatible server around the same engine, no queue.

A bare ASGI app on uvicorn (uvloop, httptools): it validates the body with llmspool's own
request models, runs the same backend a worker would (the ``fake`` engine by default) in the
request's task and writes one SSE chunk per delta. It is what llmspool would cost if the queue
hop were free. Run it with ``python -m bench.direct --port N --ttft-ms T --itl-ms I``, or on
another backend with ``--backend transformers --options '{"model": "DIR", "device": "cuda"}'``
(the GPU record, ``bench/gpu.py``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

from llmspool.consumers.backends import create_backend
from llmspool.consumers.backends.base import Backend
from llmspool.consumers.backends.fake import FakeBackend, Options
from llmspool.shared.config import ModelConfig
from llmspool.shared.messages import Job, JobKind
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
JSON_HEADERS = [(b"content-type", b"application/json")]


class DirectApp:
    """POST /v1/chat/completions and /v1/completions (streamed or not), GET /v1/models."""

    def __init__(self, engine: Backend, model: str = "fake") -> None:
        self.model = model
        self.engine = engine

    @classmethod
    def fake(cls, ttft_ms: float, itl_ms: float, model: str = "fake") -> DirectApp:
        config = ModelConfig(name=model, backend="fake", max_concurrency=4096)
        return cls(FakeBackend(config, Options(ttft_ms=ttft_ms, itl_ms=itl_ms)), model)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "GET" and path in ("/v1/models", "/health"):
            cards = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            await _json(send, 200, cards)
        elif scope["method"] == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            await self._complete(path.endswith("chat/completions"), await _body(receive), send)
        else:
            await _json(send, 404, {"error": {"message": "not found"}})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Load the engine before the first request, and release it at the end."""
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await self.engine.start()
                await send({"type": "lifespan.startup.complete"})
        await self.engine.stop()
        await send({"type": "lifespan.shutdown.complete"})

    async def _complete(self, chat: bool, raw: bytes, send: Send) -> None:
        model: type[ChatCompletionRequest | CompletionRequest]
        model = ChatCompletionRequest if chat else CompletionRequest
        body = model.model_validate_json(raw)
        kind = JobKind.CHAT if chat else JobKind.COMPLETION
        job = Job(
            request_id=f"direct-{uuid.uuid4().hex}",
            kind=kind,
            model=self.model,
            body=body,
            deadline=time.time() + 600,
        )
        chunks = Chunks(job, chat)
        if not body.stream:
            await self._whole(job, chunks, send)
            return
        usage = bool(body.stream_options and body.stream_options.include_usage)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        if chat:
            await _event(send, chunks.chunk({"role": "assistant", "content": ""}, None))
        async for delta in self.engine.generate(job):
            if delta.text:
                await _event(send, chunks.text(delta.text))
            if delta.finish_reason is not None:
                await _event(send, chunks.finish(delta.finish_reason))
                if usage and delta.usage is not None:
                    await _event(send, chunks.usage(delta.usage.model_dump()))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _whole(self, job: Job, chunks: Chunks, send: Send) -> None:
        parts: list[str] = []
        finish, usage = "length", {}
        async for delta in self.engine.generate(job):
            parts.append(delta.text)
            if delta.finish_reason is not None:
                finish = delta.finish_reason
                usage = delta.usage.model_dump() if delta.usage else {}
        await _json(send, 200, chunks.whole("".join(parts), finish, usage))


class Chunks:
    """OpenAI chunk objects of one reply."""

    def __init__(self, job: Job, chat: bool) -> None:
        self.chat = chat
        self.head = {
            "id": job.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(job.enqueued_at),
            "model": job.model,
        }

    def chunk(self, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta.get("content", "")
        return {**self.head, "choices": [choice]}

    def text(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text}, None)

    def finish(self, reason: str) -> dict[str, Any]:
        return self.chunk({}, reason)

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage}

    def whole(self, text: str, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
        else:
            choice = {"text": text}
        choice.update(index=0, logprobs=None, finish_reason=finish)
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.head, "object": kind, "choices": [choice], "usage": usage}


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _event(send: Send, obj: dict[str, Any]) -> None:
    body = b"data: " + orjson.dumps(obj) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _json(send: Send, status: int, obj: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps(obj)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--backend", default="fake", help="any llmspool backend")
    parser.add_argument("--model", default="fake", help="the served model name")
    parser.add_argument("--options", default="", help="the backend's options, as JSON")
    parser.add_argument("--max-concurrency", type=int, default=4096)
    args = parser.parse_args()
    if args.backend == "fake" and not args.options:
        app = DirectApp.fake(args.ttft_ms, args.itl_ms, args.model)
    else:
        config = ModelConfig(
            name=args.model,
            backend=args.backend,
            max_concurrency=args.max_concurrency,
            options=json.loads(args.options or "{}"),
        )
        app = DirectApp(create_backend(config), args.model)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
