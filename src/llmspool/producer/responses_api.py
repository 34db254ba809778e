"""The Responses API for text and function tools: ``POST /v1/responses`` (streamed or not),
``GET /v1/responses/{id}`` and ``DELETE /v1/responses/{id}``.

A response is served as a chat completion job on the model's stream, by the same workers and
after the same checks (:mod:`llmspool.producer.response_requests` translates the request); its
reply becomes the response object or its typed stream events
(:mod:`llmspool.producer.response_events`). The response id is the job's request id, so
``GET /v1/requests/{id}`` and the request log find it too. With ``store`` (the default) the
response and its conversation are kept for ``previous_response_id``
(:mod:`llmspool.producer.response_store`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from llmspool.producer import auth, response_requests, responses
from llmspool.producer.dispatch import Reply
from llmspool.producer.response_events import ResponseWriter
from llmspool.producer.response_store import ResponseStore, StoredResponse, owner
from llmspool.producer.routes import collect_frames, submit
from llmspool.producer.service import Producer, get_producer
from llmspool.producer.sse import EventStream
from llmspool.shared.errors import InvalidRequest, LLMSpoolError
from llmspool.shared.messages import JobKind
from llmspool.shared.protocol import ChatMessage, ErrorResponse
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.responses_api import (
    Response as ResponseObject,
)
from llmspool.shared.responses_api import (
    ResponseDeleted,
    ResponseRequest,
    TextConfig,
    TextFormatText,
)

log = logging.getLogger(__name__)
router = APIRouter()
ProducerDep = Annotated[Producer, Depends(get_producer)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 500, 503, 504)
}
_SSE = {"text/event-stream": {"schema": {"type": "object"}}}


def _store(producer: Producer) -> ResponseStore:
    return ResponseStore(producer.redis, producer.settings.responses_ttl)


@router.post(
    "/v1/responses",
    response_model=None,
    responses={200: {"model": ResponseObject, "content": _SSE}, **_ERRORS},
)
async def create_response(
    body: ResponseRequest, request: Request, producer: ProducerDep
) -> Response:
    """Create a model response, streamed (typed SSE events) or not."""
    response_requests.check(body)
    history = await _history(producer, request, body.previous_response_id)
    messages = response_requests.conversation(body, history)
    reply = await _submit(producer, request, body, messages)
    turn = _Turn(_store(producer) if body.store is not False else None, request, messages)
    writer = ResponseWriter(_skeleton(body, reply))
    if body.stream:
        return EventStream(_events(reply, writer, turn), headers={"x-request-id": reply.request_id})
    with _responses_names():  # the engine may find the request's fault too
        frames = await collect_frames(request, reply)
    final = frames[-1]
    message = responses.chat_completion(reply, frames, final).choices[0].message
    if message.content:
        writer.text(message.content)
    for index, call in enumerate(getattr(message, "tool_calls", None) or []):
        writer.tool_call({"index": index, **_dump(call)})
    writer.finish(final.finish_reason, final.usage)
    await turn.keep(writer.response)
    return JSONResponse(writer.response.model_dump(mode="json"))


async def _history(producer: Producer, request: Request, previous: str | None) -> list[ChatMessage]:
    """The conversation a response continues (none without ``previous_response_id``)."""
    if previous is None:
        return []
    key = auth.current_key(request)
    return (await _store(producer).get(previous, key, "previous_response_id")).messages


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=_ERRORS)
async def get_response(response_id: str, request: Request, producer: ProducerDep) -> ResponseObject:
    """A stored response."""
    stored = await _store(producer).get(response_id, auth.current_key(request), "response_id")
    return stored.response


@router.delete("/v1/responses/{response_id}", response_model=ResponseDeleted, responses=_ERRORS)
async def delete_response(
    response_id: str, request: Request, producer: ProducerDep
) -> ResponseDeleted:
    """Delete a stored response."""
    await _store(producer).delete(response_id, auth.current_key(request))
    return ResponseDeleted(id=response_id)


async def _submit(
    producer: Producer, request: Request, body: ResponseRequest, messages: list[ChatMessage]
) -> Reply:
    """Enqueue the chat job."""
    chat = response_requests.chat_request(body, messages)
    with _responses_names():
        return await submit(producer, request, chat, JobKind.CHAT, "resp_")


@contextlib.contextmanager
def _responses_names() -> Iterator[None]:
    """An error about a chat parameter names the Responses one instead."""
    try:
        yield
    except InvalidRequest as exc:
        exc.param = response_requests.RESPONSES_PARAM.get(exc.param or "", exc.param)
        raise


def _skeleton(body: ResponseRequest, reply: Reply) -> ResponseObject:
    """The response as created: in progress, no output yet, the request's settings echoed."""
    return ResponseObject(
        id=reply.request_id,
        created_at=int(reply.meta.created),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=reply.meta.model,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        store=body.store is not False,
        temperature=body.temperature,
        text=body.text or TextConfig(format=TextFormatText(type="text")),
        tool_choice=body.tool_choice or "auto",
        tools=body.tools or [],
        top_p=body.top_p,
        user=body.user,
        metadata=body.metadata or {},
    )


class _Turn:
    """Keeps a finished response and its conversation, when the request said ``store``."""

    def __init__(
        self, store: ResponseStore | None, request: Request, messages: list[ChatMessage]
    ) -> None:
        self.store = store
        self.owner = owner(auth.current_key(request))
        self.messages = messages

    async def keep(self, response: ResponseObject) -> None:
        if self.store is None:
            return
        output = _assistant_message(response)
        messages = [*self.messages, output] if output is not None else self.messages
        stored = StoredResponse(owner=self.owner, response=response, messages=messages)
        try:
            await self.store.put(stored)
        except UNAVAILABLE as exc:  # the reply is still the client's; only continuing it fails
            log.warning("could not store response %s: %s", response.id, exc)


def _assistant_message(response: ResponseObject) -> ChatMessage | None:
    """The response's output as one assistant chat message (text and tool calls)."""
    text = response.output_text() or None
    calls = [
        response_requests.tool_call(item.call_id, item.name, item.arguments)
        for item in response.output
        if item.type == "function_call"
    ]
    if text is None and not calls:
        return None
    return ChatMessage.model_validate(response_requests.assistant_calls(text, calls))


async def _events(reply: Reply, writer: ResponseWriter, turn: _Turn) -> AsyncIterator[bytes]:
    """The typed events of a streamed response; an error ends it with ``response.failed``.
    Leaving early (client gone) cancels the job."""
    pending = writer.opening()
    try:
        async for frame in reply.frames():
            if frame.error is not None:
                raise frame.error.to_exception()
            if frame.text:
                pending += writer.text(frame.text)
            for delta in getattr(frame, "tool_calls", None) or []:
                pending += writer.tool_call(_dump(delta))
            if frame.final:
                pending += writer.finish(frame.finish_reason, frame.usage)
                await turn.keep(writer.response)
            if pending and not reply.ready():
                yield b"".join(pending)
                pending = []
        yield b"".join(pending)
    except LLMSpoolError as exc:
        yield b"".join([*pending, *writer.fail(exc)])
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await reply.close()


def _dump(value: Any) -> dict[str, Any]:
    """A chat tool call (a model or a dict) as a dict."""
    dumped = value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value
    return dict(dumped)
