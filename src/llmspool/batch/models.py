"""The OpenAI objects of the Files and Batch APIs, fields in the reference's order."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from llmspool.shared.protocol import OpenAIBaseModel

#: A JSON object of a result or output file line: its shape is OpenAI's batch file format.
Record = dict[str, Any]

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})

BatchEndpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]

METADATA_PAIRS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


class FileObject(OpenAIBaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class FileDeleted(OpenAIBaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchRequestCounts(OpenAIBaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(OpenAIBaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class InputTokensDetails(OpenAIBaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(OpenAIBaseModel):
    reasoning_tokens: int = 0


class BatchUsage(OpenAIBaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class Batch(OpenAIBaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None


Metadata = Annotated[dict[str, str], Field(max_length=METADATA_PAIRS)]


class BatchCreateRequest(OpenAIBaseModel):
    input_file_id: Annotated[str, Field(min_length=1)]
    endpoint: BatchEndpoint
    completion_window: Literal["24h"]
    metadata: Metadata | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_sizes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, item in (value or {}).items():
            if len(key) > METADATA_KEY_CHARS:
                raise ValueError(f"metadata keys are at most {METADATA_KEY_CHARS} characters")
            if len(item) > METADATA_VALUE_CHARS:
                raise ValueError(f"metadata values are at most {METADATA_VALUE_CHARS} characters")
        return value


class Page(OpenAIBaseModel):
    """A page of a list: ``GET /v1/files`` and ``GET /v1/batches``."""

    object: Literal["list"] = "list"
    data: list[FileObject] | list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
