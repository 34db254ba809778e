"""What a batch line leaves behind: its result record, and its line in the output files.

A record is ``{"id", "response": {"status_code", "request_id", "body"}, "error"}``: the same
object as an output line, less ``custom_id`` (joined back from the input file when the batch
is finalized). A line that ran and succeeded has status 200 and goes to the output file; every
other line goes to the error file.
"""

from __future__ import annotations

import base64
import struct
import uuid

from llmspool.batch.lines import LineError
from llmspool.batch.models import Record
from llmspool.shared import replies
from llmspool.shared.errors import LLMSpoolError
from llmspool.shared.messages import Job, JobKind, ReplyFrame
from llmspool.shared.protocol import ChatCompletionRequest, EmbeddingRequest, Usage

UNRUN_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed: the batch was cancelled.",
}


def _request_record(request_id: str, status: int, body: Record) -> Record:
    response = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "response": response, "error": None}


def succeeded(record: Record) -> bool:
    response = record.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


def success_record(job: Job, frames: list[ReplyFrame], final: ReplyFrame) -> Record:
    """The 200 response the endpoint would have answered for ``job``."""
    return _request_record(job.request_id, 200, response_body(job, frames, final))


def failure_record(job: Job, exc: LLMSpoolError) -> Record:
    """The error response the endpoint would have answered for ``job``."""
    return _request_record(job.request_id, exc.status_code, exc.to_dict())


def line_error_record(error: LineError) -> Record:
    """A line refused before it ran."""
    if error.status is None:
        return {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "response": None,
            "error": {"code": error.code, "message": error.message},
        }
    body = {
        "error": {
            "message": error.message,
            "type": error.kind,
            "param": error.param,
            "code": error.code,
        }
    }
    return _request_record(uuid.uuid4().hex, error.status, body)


def output_line(custom_id: str | None, record: Record) -> Record:
    return {
        "id": record["id"],
        "custom_id": custom_id,
        "response": record.get("response"),
        "error": record.get("error"),
    }


def unrun_line(custom_id: str | None, code: str) -> Record:
    """The error line of a request the batch never ran (expired or cancelled first)."""
    error = {"code": code, "message": UNRUN_MESSAGES[code]}
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": None,
        "error": error,
    }


def tokens(final: ReplyFrame) -> tuple[int, int]:
    usage = final.usage or Usage()
    return usage.prompt_tokens, usage.completion_tokens


def response_body(job: Job, frames: list[ReplyFrame], final: ReplyFrame) -> Record:
    """The body of the 200 response to ``job``: a chat completion, completion or embeddings."""
    usage = final.usage or Usage()
    if job.kind is JobKind.EMBEDDING:
        return _embeddings(job, final, usage)
    created = int(job.enqueued_at)
    if job.kind is JobKind.CHAT:
        legacy = isinstance(job.body, ChatCompletionRequest) and job.body.legacy_functions()
        chat = replies.chat_completion(job.request_id, created, job.model, frames, usage, legacy)
        return chat.model_dump()
    return replies.completion(job.request_id, created, job.model, frames, usage).model_dump()


def _embeddings(job: Job, final: ReplyFrame, usage: Usage) -> Record:
    encoding = job.body.encoding_format if isinstance(job.body, EmbeddingRequest) else None
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, encoding)}
        for i, vector in enumerate(final.embeddings or [])
    ]
    used = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
    return {"object": "list", "data": data, "model": job.model, "usage": used}


def _encode(vector: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
