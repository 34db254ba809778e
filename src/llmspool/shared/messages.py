"""Wire messages: the jobs on the model streams and the reply frames on the reply channels.

Both carry a schema version ``v``. A job is stored as a flat stream entry so that
``redis-cli XRANGE`` shows it readably; a reply frame is one JSON document.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmspool.shared.errors import LLMSpoolError, from_wire
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    CompletionRequest,
    EmbeddingRequest,
    FinishReason,
    ToolCallDelta,
    Usage,
)
from llmspool.shared.tokens import DetokenizeRequest, TokenizeRequest

#: The job schema this version writes. A worker reads every version from
#: MIN_SCHEMA_VERSION to SCHEMA_VERSION and hands back newer ones (rolling upgrades); new
#: fields are optional and additive, so adjacent versions read each other's replies.
SCHEMA_VERSION = 1
MIN_SCHEMA_VERSION = 1

RequestBody = (
    ChatCompletionRequest
    | CompletionRequest
    | EmbeddingRequest
    | TokenizeRequest
    | DetokenizeRequest
)


class JobKind(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"


_BODY_TYPES: dict[JobKind, type[RequestBody]] = {
    JobKind.CHAT: ChatCompletionRequest,
    JobKind.COMPLETION: CompletionRequest,
    JobKind.EMBEDDING: EmbeddingRequest,
    JobKind.TOKENIZE: TokenizeRequest,
    JobKind.DETOKENIZE: DetokenizeRequest,
}


class UnknownSchema(ValueError):
    """A job written by a version of llmspool this one does not understand."""


class Job(BaseModel):
    """One request, as it waits on a model stream."""

    model_config = ConfigDict(frozen=True)

    v: int = SCHEMA_VERSION
    request_id: str
    kind: JobKind
    model: str
    body: RequestBody
    enqueued_at: float = Field(default_factory=time.time)
    deadline: float
    #: Filled in by the worker from the delivery count (XPENDING); 1 on first delivery. Reply
    #: frames carry it, so a client tells the frames of a retry from a stalled first try's.
    attempt: int = 1
    batch_id: str | None = None
    batch_line: int | None = None
    #: Whose turn the job waits for (shared/tenants.py): the API key's id, or "anonymous".
    tenant: str | None = None

    def to_fields(self) -> dict[str, str]:
        """The flat stream entry written with XADD."""
        fields = {
            "v": str(self.v),
            "request_id": self.request_id,
            "kind": self.kind.value,
            "model": self.model,
            "enqueued_at": f"{self.enqueued_at:.6f}",
            "deadline": f"{self.deadline:.6f}",
            "body": self.body.model_dump_json(exclude_unset=True),
        }
        if self.batch_id is not None:
            fields["batch_id"] = self.batch_id
            fields["batch_line"] = str(self.batch_line)
        if self.tenant is not None:
            fields["tenant"] = self.tenant
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str], attempt: int = 1) -> Job:
        """Parse a stream entry; raises :class:`UnknownSchema` for a newer schema."""
        version = int(fields.get("v", "0"))
        if not MIN_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
            raise UnknownSchema(
                f"job schema v{version}, this worker reads v{MIN_SCHEMA_VERSION}..v{SCHEMA_VERSION}"
            )
        kind = JobKind(fields["kind"])
        line = fields.get("batch_line")
        return cls(
            request_id=fields["request_id"],
            kind=kind,
            model=fields["model"],
            body=_BODY_TYPES[kind].model_validate_json(fields["body"]),
            enqueued_at=float(fields["enqueued_at"]),
            deadline=float(fields["deadline"]),
            attempt=attempt,
            batch_id=fields.get("batch_id"),
            batch_line=int(line) if line is not None else None,
            tenant=fields.get("tenant"),
        )

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) > self.deadline


class ReplyMeta(BaseModel):
    """What a reply needs besides its frames: written by the producer as the first entry of the
    request's reply log, so any API process can resume or finish the reply."""

    request_id: str
    kind: JobKind
    model: str
    created: float
    deadline: float
    stream: bool = False
    include_usage: bool = False
    #: Choices the reply carries (``n``).
    n: int = 1
    #: The tenant (API key id) that made the request: only it (and admin keys) may follow it.
    owner: str | None = None
    #: The request used the legacy ``functions``: calls are shown as ``function_call``.
    legacy_functions: bool = False

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def of(cls, job: Job) -> ReplyMeta:
        # only generation requests stream and have choices
        body = job.body
        streamed, options, n = False, None, None
        if isinstance(body, ChatCompletionRequest | CompletionRequest):
            streamed, options, n = bool(body.stream), body.stream_options, body.n
        return cls(
            request_id=job.request_id,
            kind=job.kind,
            model=job.model,
            created=job.enqueued_at,
            deadline=job.deadline,
            stream=streamed,
            include_usage=bool(options and options.include_usage),
            n=n or 1,
            owner=job.tenant,
            legacy_functions=isinstance(body, ChatCompletionRequest) and body.legacy_functions(),
        )


class WireError(BaseModel):
    """An error carried by a reply frame; rebuilt by the producer into an LLMSpoolError."""

    kind: str = "EngineError"
    message: str
    code: str | None = None
    param: str | None = None

    @classmethod
    def of(cls, exc: LLMSpoolError) -> WireError:
        return cls(kind=type(exc).__name__, message=exc.message, code=exc.code, param=exc.param)

    def to_exception(self) -> LLMSpoolError:
        return from_wire(self.kind, self.message, self.code, self.param)


class ReplyFrame(BaseModel):
    """One frame of a reply: a text delta (possibly several tokens), and at the end the finish
    reason and usage, or an error. ``seq`` counts frames of one attempt from 1.

    A reply of ``n`` choices tags each frame with its choice ``index``; a choice that ends
    while others go on ends with a frame with its finish reason and ``more``; the last one to
    end carries the final frame (usage summed over the choices)."""

    v: int = SCHEMA_VERSION
    request_id: str
    attempt: int = 1
    seq: int
    text: str = ""
    tokens: int = 0
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    embeddings: list[list[float]] | None = None
    #: The answer of a tokenize job (a detokenize job answers with ``text``).
    token_ids: list[int] | None = None
    error: WireError | None = None
    worker: str | None = None
    #: When the worker picked the job up (epoch seconds): on the first and the final frame.
    started_at: float | None = None
    #: The choice this frame belongs to (None: 0).
    index: int | None = None
    #: The logprobs of the frame's tokens, where the request asked for them.
    logprobs: list[ChatCompletionTokenLogprob] | None = None
    #: On a choice's finish frame: other choices have not finished, the reply goes on.
    more: bool | None = None
    #: Pieces of tool calls, in OpenAI's streaming shape (consecutive argument fragments of
    #: one call coalesced).
    tool_calls: list[ToolCallDelta] | None = None

    @property
    def final(self) -> bool:
        return (
            (self.finish_reason is not None and not self.more)
            or self.error is not None
            or self.embeddings is not None
            or self.token_ids is not None
        )

    @property
    def choice(self) -> int:
        return self.index or 0

    def dumps(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def loads(cls, data: bytes | str) -> ReplyFrame:
        return cls.model_validate_json(data)


def decode_fields(raw: dict[Any, Any]) -> dict[str, str]:
    """Stream entry fields as str, whether the client decoded responses or not."""
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
