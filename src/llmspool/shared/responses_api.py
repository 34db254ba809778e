"""OpenAI's Responses API (``/v1/responses``) for text and function tools: the request, the
response object and the typed stream events, fields in the OpenAI reference's order.

llmspool serves a response as a chat completion job (producer/responses_api.py translates
both ways). What it cannot honour is refused by :func:`unsupported_response_parameters` with a
400 naming the parameter: built-in tools, background mode, reasoning, prompt templates,
conversations, and any field this module does not know.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from llmspool.shared.protocol import (
    OpenAIBaseModel,
    PositiveInt,
    RequestModel,
    Temperature,
    TopP,
)

# ------------------------------------------------------------------------------- input items


class InputText(OpenAIBaseModel):
    """A text content part: ``input_text``, or ``output_text`` of an earlier reply."""

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(OpenAIBaseModel):
    """A message item (``type`` may be left out, as in OpenAI's "easy" input messages)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCall(OpenAIBaseModel):
    """A function call the model made (an output item, passed back as input)."""

    type: Literal["function_call"] = "function_call"
    id: str | None = None
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutput(OpenAIBaseModel):
    """The result of a function call, sent back by the application."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


def _item_type(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else value.type
    return str(kind)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCall, Tag("function_call")]
    | Annotated[FunctionCallOutput, Tag("function_call_output")],
    Discriminator(_item_type),
]


# ------------------------------------------------------------------------------- the request


class FunctionTool(OpenAIBaseModel):
    """A function tool, Responses style: flat, not under ``function``."""

    type: Literal["function"]
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextConfig(OpenAIBaseModel):
    """``text``: the output format (text, json_object or json_schema)."""

    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(OpenAIBaseModel):
    include_obfuscation: bool | None = None


class ResponseRequest(RequestModel):
    """The body of ``POST /v1/responses``."""

    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    background: bool | None = None
    conversation: Any = None
    include: list[str] | None = None
    instructions: str | None = None
    max_output_tokens: PositiveInt | None = None
    max_tool_calls: PositiveInt | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    prompt: Any = None
    prompt_cache_key: str | None = None
    reasoning: dict[str, Any] | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool | None = True
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    text: TextConfig | None = None
    tool_choice: str | dict[str, Any] | None = None
    #: Checked one by one when translated: only function tools are served.
    tools: list[dict[str, Any]] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    top_p: TopP | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None


#: Parameters a Responses request may name, with the values that mean "not set"; any other
#: value is refused, as is any field not known here.
_NOT_SET: dict[str, tuple[object, ...]] = {
    "background": (None, False),
    "conversation": (None,),
    "include": (None, []),
    "max_tool_calls": (None,),
    "prompt": (None,),
    "prompt_cache_key": (None,),
    "service_tier": (None, "auto", "default"),
    "top_logprobs": (None, 0),
    "truncation": (None, "disabled"),
}


def unsupported_response_parameters(request: ResponseRequest) -> list[str]:
    """Names of the parameters of ``request`` that llmspool cannot honour."""
    names = [name for name, ok in _NOT_SET.items() if getattr(request, name) not in ok]
    if request.reasoning and any(v is not None for v in request.reasoning.values()):
        names.append("reasoning")
    if request.text is not None and request.text.verbosity not in (None, "medium"):
        names.append("text.verbosity")
    options = request.stream_options
    if options is not None and options.include_obfuscation:
        names.append("stream_options.include_obfuscation")
    names += [name for name, value in (request.model_extra or {}).items() if value is not None]
    return names


# ------------------------------------------------------------------------------ the response


class OutputText(OpenAIBaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(OpenAIBaseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(OpenAIBaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(OpenAIBaseModel):
    cache_write_tokens: int = 0
    cached_tokens: int = 0


class OutputTokensDetails(OpenAIBaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(OpenAIBaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(OpenAIBaseModel):
    code: str
    message: str


class IncompleteDetails(OpenAIBaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


ResponseStatus = Literal["completed", "failed", "in_progress", "incomplete"]


class Response(OpenAIBaseModel):
    """The response object (``object: "response"``)."""

    id: str
    object: Literal["response"] = "response"
    created_at: float = Field(default_factory=time.time)
    status: ResponseStatus
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: TextConfig = Field(default_factory=lambda: TextConfig(format={"type": "text"}))
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    def output_text(self) -> str:
        """The text of every output message, joined (the SDK's ``output_text``)."""
        messages = (item for item in self.output if isinstance(item, OutputMessage))
        return "".join(part.text for message in messages for part in message.content)


class ResponseDeleted(OpenAIBaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


# ---------------------------------------------------------------------------- stream events


class StreamEvent(OpenAIBaseModel):
    """Base of the typed events of a streamed response; ``type`` names the event."""

    type: str
    sequence_number: int


class ResponseLifecycleEvent(StreamEvent):
    """response.created / in_progress / completed / incomplete / failed."""

    response: Response


class OutputItemEvent(StreamEvent):
    """response.output_item.added / done."""

    output_index: int
    item: OutputItem


class ContentPartEvent(StreamEvent):
    """response.content_part.added / done."""

    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class TextDeltaEvent(StreamEvent):
    type: str = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(StreamEvent):
    type: str = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(StreamEvent):
    type: str = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(StreamEvent):
    type: str = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str
