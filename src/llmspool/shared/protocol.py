"""OpenAI protocol models: requests and responses, fields in the OpenAI reference's order.

Every model derives from :class:`OpenAIBaseModel`, which accepts and keeps unknown fields so a
newer client never breaks us. Parameters the engines cannot honour are refused by
:func:`unsupported_parameters`, never silently dropped. llmspool's own extensions are fenced
under "llmspool extensions" and documented in docs/api.md.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length"]


class OpenAIBaseModel(BaseModel):
    """Base of every protocol model: unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None


Stop = str | Annotated[list[str], Field(max_length=4)] | None
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
# Bounds a JSON number holds exactly (doubles): larger ones cannot be validated consistently.
Seed = Annotated[int, Field(ge=-(2**53), le=2**53)]
NonEmptyText = Annotated[str, Field(min_length=1)]


def _document_harmless(schema: dict[str, Any]) -> None:
    """In the OpenAPI spec, offer only the values of unsupported parameters that we accept."""
    for name, prop in schema.get("properties", {}).items():
        if name in _HARMLESS:
            values = list(_HARMLESS[name])
            kept = {k: v for k, v in prop.items() if k in ("title", "description")}
            prop.clear()
            prop.update(
                kept,
                enum=values,
                description="Accepted only as 'not set': no engine behind llmspool honours it.",
            )


class RequestModel(OpenAIBaseModel):
    """Base of request bodies: unsupported parameters are documented as such."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_document_harmless)


class ChatCompletionRequest(RequestModel):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    audio: Any = None
    frequency_penalty: Penalty | None = None
    function_call: Any = None
    functions: Any = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    n: PositiveInt | None = None
    parallel_tool_calls: bool | None = None
    prediction: Any = None
    presence_penalty: Penalty | None = None
    response_format: Any = None
    seed: Seed | None = None
    stop: Stop = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    tool_choice: Any = None
    tools: Any = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    top_p: TopP | None = None
    user: str | None = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(RequestModel):
    model: Annotated[str, Field(min_length=1)]
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    best_of: PositiveInt | None = None
    echo: bool | None = False
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    max_tokens: PositiveInt | None = 16
    n: PositiveInt | None = None
    presence_penalty: Penalty | None = None
    seed: Seed | None = None
    stop: Stop = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(RequestModel):
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=2048)]
    model: Annotated[str, Field(min_length=1)]
    dimensions: PositiveInt | None = None
    encoding_format: Literal["float", "base64"] | None = "float"
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# Parameters a request may name but no llmspool engine honours; each maps to the values that
# are harmless (equal to "not set"). Anything else is refused with a 400 naming the param.
_HARMLESS: dict[str, tuple[object, ...]] = {
    "audio": (None,),
    "function_call": (None, "none"),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "logprobs": (None, False, 0),
    "modalities": (None, ["text"]),
    "n": (None, 1),
    "best_of": (None, 1),
    "parallel_tool_calls": (None, True, False),
    "prediction": (None,),
    "response_format": (None, {"type": "text"}),
    "suffix": (None, ""),
    "echo": (None, False),
    "tool_choice": (None, "none", "auto"),
    "tools": (None, []),
    "top_logprobs": (None, 0),
    "dimensions": (None,),
}


def unsupported_parameters(request: BaseModel) -> list[str]:
    """Names of known OpenAI parameters set to values no engine behind llmspool honours."""
    names = [name for name in type(request).model_fields if name in _HARMLESS]
    return [name for name in names if getattr(request, name) not in _HARMLESS[name]]


# ---------------------------------------------------------------------------------- responses


class Usage(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatCompletionChoice(OpenAIBaseModel):
    index: int = 0
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: FinishReason | None


class ChatCompletion(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatDelta(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(OpenAIBaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None


class CompletionChoice(OpenAIBaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Embedding(OpenAIBaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelServing(OpenAIBaseModel):
    """llmspool extension on a model card: how the model is served."""

    backend: str
    capabilities: list[str]
    #: Workers serving it now (from the registry); None when Redis could not say.
    workers: int | None = None
    #: "offline" while an operator keeps new requests out (they get 503 model_offline).
    status: Literal["online", "offline"] = "online"


class Model(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmspool"
    # --- llmspool extensions ---
    llmspool: ModelServing | None = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorDetail


class Health(BaseModel):
    """The body of ``GET /health``."""

    status: Literal["ok", "unavailable"]
    redis: str | None = None
