"""OpenAI protocol models: requests and responses, fields in the OpenAI reference's order.

Every model derives from :class:`OpenAIBaseModel`, which parses unknown fields rather than
failing on them. Whether a request's parameters are honoured is the model's backend's to say
(:mod:`llmspool.shared.capabilities`): a parameter is honoured or refused with a 400 naming it,
never silently dropped. llmspool's own extensions are fenced under "llmspool extensions" and
documented in docs/api.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: ``tool_calls`` ends a reply that calls tools; ``function_call`` the same for a request that
#: used the legacy ``functions``.
FinishReason = Literal["stop", "length", "tool_calls", "function_call"]


class OpenAIBaseModel(BaseModel):
    """Base of every protocol model: unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


# ------------------------------------------------------------------ tools and structured output

FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class FunctionDefinition(OpenAIBaseModel):
    name: FunctionName
    description: str | None = None
    #: A JSON schema of the arguments (an object); unset: no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionRef(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionRef


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
#: The legacy ``function_call``: "none", "auto" or ``{"name": ...}``.
FunctionChoice = Literal["none", "auto"] | FunctionRef


class FunctionCall(OpenAIBaseModel):
    name: str
    #: The arguments as a JSON text, as the model wrote them.
    arguments: str


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(OpenAIBaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(OpenAIBaseModel):
    """A piece of a streamed tool call: ``index``, ``id``, ``type`` and the name first, then
    fragments of the arguments (OpenAI's streaming shape)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class JsonSchemaFormat(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(OpenAIBaseModel):
    type: Literal["text"]


class JsonObjectFormat(OpenAIBaseModel):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(OpenAIBaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")
]


class StructuredOutputs(OpenAIBaseModel):
    """vLLM's ``structured_outputs``: one constraint on the generated text."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    #: An assistant turn's calls, and the call a ``tool`` message answers.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    #: The legacy form of an assistant turn's call.
    function_call: FunctionCall | None = None

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


def _refuse_bool(value: object) -> object:
    """JSON's true and false are not numbers (pydantic's lax mode would read them as 1 and 0),
    while 16.0 stays an integer as JSON Schema says."""
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


NotBool = BeforeValidator(_refuse_bool)

Temperature = Annotated[float, Field(ge=0.0, le=2.0), NotBool]
TopP = Annotated[float, Field(gt=0.0, le=1.0), NotBool]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0), NotBool]
PositiveInt = Annotated[int, Field(ge=1), NotBool]
# Bounds a JSON number holds exactly (doubles): larger ones cannot be validated consistently.
Seed = Annotated[int, Field(ge=-(2**53), le=2**53), NotBool]
NonEmptyText = Annotated[str, Field(min_length=1)]
#: Choices per request: OpenAI's own bound.
Choices = Annotated[int, Field(ge=1, le=128), NotBool]
TokenIds = Annotated[list[Annotated[int, Field(ge=0), NotBool]], Field(max_length=256)]


class RequestModel(OpenAIBaseModel):
    """Base of request bodies. Unknown fields are parsed, then refused by the request check
    unless the model's backend passes them through (see shared/capabilities.py)."""


class ChatCompletionRequest(RequestModel):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    audio: Any = None
    frequency_penalty: Penalty | None = None
    function_call: FunctionChoice | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=128)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    n: Choices | None = None
    parallel_tool_calls: bool | None = None
    prediction: Any = None
    presence_penalty: Penalty | None = None
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    seed: Seed | None = None
    service_tier: str | None = None
    stop: Stop = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    tool_choice: ToolChoice | None = None
    tools: Annotated[list[ChatTool], Field(max_length=128)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), NotBool] | None = None
    top_p: TopP | None = None
    user: str | None = None
    # --- vLLM's extensions (honoured where the backend can, see shared/capabilities.py) ---
    top_k: Annotated[int, Field(ge=-1), NotBool] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0), NotBool] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0), NotBool] | None = None
    min_tokens: Annotated[int, Field(ge=0), NotBool] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: TokenIds | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # --- vLLM's structured outputs (honoured where the backend can, see shared/outputs.py) ---
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def function_tools(self) -> list[FunctionDefinition]:
        """The functions the model may call: ``tools``, else the legacy ``functions``."""
        if self.tools:
            return [tool.function for tool in self.tools]
        return list(self.functions or [])

    def legacy_functions(self) -> bool:
        """Whether the request uses ``functions``/``function_call`` rather than ``tools``."""
        return not self.tools and bool(self.functions)

    def top_logprobs_wanted(self) -> int | None:
        """Alternatives per token to report; None: no logprobs at all (``top_logprobs`` > 0
        asks for logprobs too, rather than being refused)."""
        return (self.top_logprobs or 0) if self.logprobs or self.top_logprobs else None


class CompletionRequest(RequestModel):
    model: Annotated[str, Field(min_length=1)]
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    best_of: PositiveInt | None = None
    echo: bool | None = False
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5), NotBool] | None = None
    max_tokens: PositiveInt | None = 16
    n: Choices | None = None
    presence_penalty: Penalty | None = None
    seed: Seed | None = None
    stop: Stop = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    # --- vLLM's extensions (honoured where the backend can, see shared/capabilities.py) ---
    top_k: Annotated[int, Field(ge=-1), NotBool] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0), NotBool] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0), NotBool] | None = None
    min_tokens: Annotated[int, Field(ge=0), NotBool] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: TokenIds | None = None
    # --- vLLM's structured outputs (honoured where the backend can, see shared/outputs.py) ---
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        """Alternatives per token to report; None: no logprobs at all."""
        return self.logprobs


class EmbeddingRequest(RequestModel):
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=2048)]
    model: Annotated[str, Field(min_length=1)]
    dimensions: PositiveInt | None = None
    encoding_format: Literal["float", "base64"] | None = "float"
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---------------------------------------------------------------------------------- responses


class Usage(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprob(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(OpenAIBaseModel):
    """One generated token's logprob and its most likely alternatives. Also the form in which
    workers hand logprobs to the API (reply frames), whatever the endpoint."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(OpenAIBaseModel):
    """A chat choice's ``logprobs``."""

    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class CompletionLogprobs(OpenAIBaseModel):
    """A text completion choice's ``logprobs`` (the legacy shape)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class ChatCompletionMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


def assemble_tool_calls(pieces: Iterable[ToolCallDelta]) -> list[ToolCall]:
    """Whole tool calls from their streamed pieces (grouped by ``index``, fragments joined)."""
    calls: dict[int, tuple[list[str], list[str], list[str]]] = {}
    for piece in pieces:
        ids, names, arguments = calls.setdefault(piece.index, ([], [], []))
        ids.append(piece.id or "")
        if piece.function is not None:
            names.append(piece.function.name or "")
            arguments.append(piece.function.arguments or "")
    return [
        ToolCall(id="".join(ids), function=FunctionCall(name="".join(n), arguments="".join(a)))
        for _, (ids, n, a) in sorted(calls.items())
    ]


def assistant_message(
    text: str, pieces: list[ToolCallDelta] | None, legacy: bool = False
) -> ChatCompletionMessage:
    """A reply's message: its text, and its tool calls (``function_call`` for a request that
    used the legacy ``functions``)."""
    if not pieces:
        return ChatCompletionMessage(content=text)
    calls = assemble_tool_calls(pieces)
    if legacy:
        return ChatCompletionMessage(content=text or None, function_call=calls[0].function)
    return ChatCompletionMessage(content=text or None, tool_calls=calls)


class ChatCompletionChoice(OpenAIBaseModel):
    index: int = 0
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
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
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None


class ChatCompletionChunkChoice(OpenAIBaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
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
    logprobs: CompletionLogprobs | None = None
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
    #: The kinds of request it serves: chat, completion, embedding.
    capabilities: list[str]
    #: What its backend does beyond plain text: logprobs, n, echo, tools, … (shared/capabilities)
    features: list[str] = Field(default_factory=list)
    #: The request parameters its backend honours (any other, set, is refused with a 400).
    parameters: list[str] = Field(default_factory=list)
    #: Workers serving it now (from the registry); None when Redis could not say.
    workers: int | None = None
    #: "offline" while an operator keeps new requests out (they get 503 model_offline).
    status: Literal["online", "offline"] = "online"


class Model(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmspool"
    #: Context length in tokens, as its engine reports it (vLLM's field); None until a worker
    #: has said.
    max_model_len: int | None = None
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
