"""Reading a batch input file: one request per JSONL line, each checked on its own.

A line that cannot be read (not JSON, no ``custom_id``, wrong ``method`` or ``url``) fails
with an ``error``; a line whose body the endpoint would refuse fails with the 4xx response
the same request sent alone would have got. Either way only that line fails. Limits that
concern the whole file (too many lines or embedding inputs, nothing in it) fail the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from llmspool.batch.models import BatchError
from llmspool.shared.checks import check_request
from llmspool.shared.config import Config
from llmspool.shared.errors import InvalidRequest, LLMSpoolError
from llmspool.shared.messages import JobKind, RequestBody
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmspool.shared.settings import Settings

#: One line of an input file as JSON gave it, before it is checked.
Item = dict[str, Any]

ENDPOINT_KINDS: dict[str, tuple[JobKind, type[RequestBody]]] = {
    "/v1/chat/completions": (JobKind.CHAT, ChatCompletionRequest),
    "/v1/completions": (JobKind.COMPLETION, CompletionRequest),
    "/v1/embeddings": (JobKind.EMBEDDING, EmbeddingRequest),
}


@dataclass(frozen=True)
class LineError:
    """Why one line cannot run: a read error (``status`` None) or the HTTP error it gets."""

    code: str
    message: str
    param: str | None = None
    status: int | None = None
    kind: str = "invalid_request_error"


@dataclass(frozen=True)
class Line:
    """One line of the input file: its number (from 1), and a body or an error."""

    number: int
    custom_id: str | None
    body: RequestBody | None = None
    error: LineError | None = None


@dataclass
class ParsedFile:
    """Every non-blank line of an input file, and what fails the batch as a whole."""

    lines: list[Line] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)

    @property
    def valid(self) -> list[Line]:
        return [line for line in self.lines if line.body is not None]

    @property
    def models(self) -> list[str]:
        return sorted({line.body.model for line in self.valid if line.body is not None})


def parse_file(content: bytes, endpoint: str, config: Config, settings: Settings) -> ParsedFile:
    """Read and check every line of ``content`` for a batch on ``endpoint``."""
    parsed = ParsedFile()
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if raw.strip():
            parsed.lines.append(_parse_line(number, raw, endpoint, config, seen))
    parsed.errors = _file_errors(parsed, endpoint, settings)
    return parsed


def _file_errors(parsed: ParsedFile, endpoint: str, settings: Settings) -> list[BatchError]:
    if not parsed.lines:
        return [BatchError(code="empty_file", message="The input file has no requests.")]
    if len(parsed.lines) > settings.batch_max_lines:
        message = (
            f"The input file has {len(parsed.lines)} requests; a batch holds at most "
            f"{settings.batch_max_lines}."
        )
        return [BatchError(code="too_many_requests", message=message)]
    inputs = sum(
        len(line.body.texts()) for line in parsed.valid if isinstance(line.body, EmbeddingRequest)
    )
    if endpoint == "/v1/embeddings" and inputs > settings.batch_max_embedding_inputs:
        message = (
            f"The batch has {inputs} embedding inputs; at most "
            f"{settings.batch_max_embedding_inputs} are allowed across its requests."
        )
        return [BatchError(code="too_many_embedding_inputs", message=message)]
    return []


def _parse_line(number: int, raw: bytes, endpoint: str, config: Config, seen: set[str]) -> Line:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Line(number, None, error=LineError("invalid_json", "The line is not valid JSON."))
    if not isinstance(item, dict):
        return Line(number, None, error=LineError("invalid_json", "The line is not an object."))
    custom_id = item.get("custom_id")
    error = _envelope_error(item, endpoint, seen)
    if error is not None:
        return Line(number, custom_id if isinstance(custom_id, str) else None, error=error)
    seen.add(str(custom_id))
    try:
        return Line(number, custom_id, body=_body(item["body"], endpoint, config))
    except LLMSpoolError as exc:
        status = exc.status_code
        return Line(
            number,
            custom_id,
            error=LineError(
                exc.code or "invalid_request", exc.message, exc.param, status, exc.error_type
            ),
        )


def _envelope_error(item: Item, endpoint: str, seen: set[str]) -> LineError | None:
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError("missing_custom_id", "Each line needs a string 'custom_id'.", "custom_id")
    if custom_id in seen:
        return LineError(
            "duplicate_custom_id", f"The custom_id '{custom_id}' is used twice.", "custom_id"
        )
    if item.get("method") != "POST":
        return LineError("invalid_method", "'method' must be 'POST'.", "method")
    if item.get("url") != endpoint:
        message = f"'url' must be the batch's endpoint '{endpoint}', got {item.get('url')!r}."
        return LineError("mismatched_endpoint", message, "url")
    if not isinstance(item.get("body"), dict):
        return LineError("missing_body", "'body' must be a JSON object.", "body")
    return None


def _body(raw: Item, endpoint: str, config: Config) -> RequestBody:
    """The validated request body; raises the error the endpoint itself would answer."""
    kind, body_type = ENDPOINT_KINDS[endpoint]
    try:
        body = body_type.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(
            f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value"
        ) from None
    if isinstance(body, ChatCompletionRequest | CompletionRequest) and body.stream:
        raise InvalidRequest("Batch requests cannot be streamed.", param="stream")
    check_request(body, config.model(body.model), kind)
    return body


def job_kind(endpoint: str) -> JobKind:
    return ENDPOINT_KINDS[endpoint][0]
