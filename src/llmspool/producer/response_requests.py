"""A ``/v1/responses`` request as the chat completion job that serves it.

Input items become chat messages: messages as they are, a ``function_call`` as an assistant
message's ``tool_calls``, a ``function_call_output`` as a ``tool`` message. ``instructions``
lead as a system message (they are not kept for a later ``previous_response_id``, as OpenAI
does). Function tools, ``tool_choice`` and ``text.format`` take their chat shapes; the chat job
then passes the same checks as a chat request, and an error naming a chat parameter names the
Responses one instead.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from llmspool.shared.errors import InvalidRequest, UnsupportedParameter
from llmspool.shared.protocol import ChatCompletionRequest, ChatMessage
from llmspool.shared.responses_api import (
    FunctionCall,
    FunctionCallOutput,
    FunctionTool,
    InputItem,
    InputMessage,
    ResponseRequest,
    TextConfig,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    ToolChoiceFunction,
    unsupported_response_parameters,
)

#: Chat parameters as the Responses request names them (for errors about them).
RESPONSES_PARAM = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "messages": "input",
}


def check(body: ResponseRequest) -> None:
    """Refuse what no llmspool engine can honour in a Responses request."""
    for param in unsupported_response_parameters(body):
        raise UnsupportedParameter(
            f"'{param}' is not supported by llmspool's /v1/responses; remove it from the request.",
            param=param,
        )


def conversation(body: ResponseRequest, history: list[ChatMessage]) -> list[ChatMessage]:
    """The chat messages of ``history`` (a previous response's) and then ``body``'s input."""
    if isinstance(body.input, str):
        return [*history, ChatMessage(role="user", content=body.input)]
    messages = list(history)
    for item in body.input:
        _append(messages, item)
    return messages


def _append(messages: list[ChatMessage], item: InputItem) -> None:
    if isinstance(item, InputMessage):
        messages.append(ChatMessage(role=item.role, content=item.text()))
    elif isinstance(item, FunctionCall):
        call = tool_call(item.call_id, item.name, item.arguments)
        last = messages[-1].model_dump(exclude_none=True) if messages else {}
        if last.get("role") == "assistant" and last.get("tool_calls"):  # one turn, many calls
            messages[-1] = ChatMessage.model_validate(
                {**last, "tool_calls": [*last["tool_calls"], call]}
            )
        else:
            messages.append(ChatMessage.model_validate(assistant_calls(None, [call])))
    else:
        messages.append(tool_result(item))


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A tool call in the chat shape."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_calls(text: str | None, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant chat message, with its tool calls when it made some."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def tool_result(item: FunctionCallOutput) -> ChatMessage:
    return ChatMessage.model_validate(
        {"role": "tool", "content": item.text(), "tool_call_id": item.call_id}
    )


def chat_request(body: ResponseRequest, messages: list[ChatMessage]) -> ChatCompletionRequest:
    """The chat request that serves ``body``, on ``messages`` (see :func:`conversation`)."""
    system = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": [m.model_dump(exclude_none=True) for m in [*system, *messages]],
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "parallel_tool_calls": body.parallel_tool_calls,
        "user": body.user or body.safety_identifier,
        "stream": body.stream or None,
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "response_format": response_format(body.text),
    }
    try:
        return ChatCompletionRequest.model_validate(
            {name: value for name, value in fields.items() if value is not None}
        )
    except ValidationError as exc:
        raise InvalidRequest(f"The request cannot be served: {exc.errors()[0]['msg']}") from None


def chat_tools(tools: list[FunctionTool] | None) -> list[dict[str, Any]] | None:
    """Responses function tools in the chat shape."""
    if not tools:
        return None
    return [
        {"type": "function", "function": tool.model_dump(exclude_none=True, exclude={"type"})}
        for tool in tools
    ]


def chat_tool_choice(choice: str | ToolChoiceFunction | None) -> str | dict[str, Any] | None:
    """``tool_choice`` in the chat shape: none, auto, required, or one named function."""
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def response_format(text: TextConfig | None) -> dict[str, Any] | None:
    """``text.format`` as the chat ``response_format``."""
    fmt = text.format if text is not None else None
    if isinstance(fmt, TextFormatJsonObject):
        return {"type": "json_object"}
    if isinstance(fmt, TextFormatJsonSchema):
        return {
            "type": "json_schema",
            "json_schema": fmt.model_dump(exclude_none=True, exclude={"type"}),
        }
    return None
