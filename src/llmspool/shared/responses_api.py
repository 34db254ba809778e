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

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator

from llmspool.shared.protocol import NotBool, OpenAIBaseModel, PositiveInt, Temperature, TopP

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

    type: Literal["function_call"]
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
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", ""))  # a model, or junk that matches no tag


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


class ToolChoiceFunction(OpenAIBaseModel):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1)]


class TextFormatText(OpenAIBaseModel):
    type: Literal["text"]


class TextFormatJsonObject(OpenAIBaseModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    type: Literal["json_schema"]
    name: Annotated[str, Field(min_length=1)]
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


def document_not_set(schema: dict[str, Any], not_set: dict[str, tuple[object, ...]]) -> None:
    """In the OpenAPI spec, offer only the values of refused parameters that mean "not set"."""
    for name, prop in schema.get("properties", {}).items():
        if name in not_set:
            kept = {k: v for k, v in prop.items() if k in ("title", "description")}
            prop.clear()
            prop.update(kept, enum=list(not_set[name]), description="Refused unless unset.")


class TextConfig(OpenAIBaseModel):
    """``text``: the output format (text, json_object or json_schema)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=lambda s: document_not_set(s, {"verbosity": (None, "medium")}),
    )

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(OpenAIBaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=lambda s: document_not_set(s, {"include_obfuscation": (None, False)}),
    )

    include_obfuscation: bool | None = None


#: Parameters a Responses request may name, with the values that mean "not set"; any other
#: value is refused, as is any field not known here.
_NOT_SET: dict[str, tuple[object, ...]] = {
    "background": (None, False),
    "conversation": (None,),
    "include": (None, []),
    "max_tool_calls": (None,),
    "prompt": (None,),
    "prompt_cache_key": (None,),
    "reasoning": (None,),
    "service_tier": (None, "auto", "default"),
    "top_logprobs": (None, 0),
    "truncation": (None, "disabled"),
}


def _request_schema(schema: dict[str, Any]) -> None:
    document_not_set(schema, _NOT_SET)
    schema["additionalProperties"] = False  # unknown fields are refused


class ResponseRequest(OpenAIBaseModel):
    """The body of ``POST /v1/responses``."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_request_schema)

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
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    tools: list[FunctionTool] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), NotBool] | None = None
    top_p: TopP | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, tools: Any) -> Any:
        for tool in tools if isinstance(tools, list) else ():
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(
                    f"the tool type {kind!r} is not supported: llmspool serves function tools "
                    "only (no built-in tools such as web_search)"
                )
        return tools

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice_only(cls, choice: Any) -> Any:
        if isinstance(choice, dict) and choice.get("type") != "function":
            raise ValueError(
                f"tool_choice {choice.get('type')!r} is not supported: use none, auto, "
                'required or {"type": "function", "name": …}'
            )
        return choice


def unsupported_response_parameters(request: ResponseRequest) -> list[str]:
    """Names of the parameters of ``request`` that llmspool cannot honour."""
    names = [name for name, ok in _NOT_SET.items() if getattr(request, name) not in ok]
    if "reasoning" in names and not any(v is not None for v in (request.reasoning or {}).values()):
        names.remove("reasoning")  # {} or {"effort": null}: nothing asked for
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
    text: TextConfig = Field(default_factory=lambda: TextConfig(format=TextFormatText(type="text")))
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction = "auto"
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
