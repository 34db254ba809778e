"""The Responses API translated to chat and back, function calls included, checked against the
openai package's own types (no engine needed)."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseFunctionToolCall, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from llmspool.producer import response_requests
from llmspool.producer.response_events import ResponseWriter
from llmspool.shared.protocol import Usage
from llmspool.shared.responses_api import Response as OurResponse
from llmspool.shared.responses_api import ResponseRequest

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
EVENTS = TypeAdapter(ResponseStreamEvent)


def test_function_call_items_become_chat_tool_calls_and_tool_messages() -> None:
    body = ResponseRequest.model_validate(
        {
            "model": "m",
            "instructions": "Use tools.",
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": "{}",
                },
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "get_weather",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"},
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "max_output_tokens": 7,
        }
    )
    chat = response_requests.chat_request(body, response_requests.conversation(body, []))
    dumped = chat.model_dump(exclude_none=True)
    messages = dumped["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]  # one turn, two calls
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    assert dumped["tools"] == [
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    ]
    assert dumped["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert dumped["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert chat.max_completion_tokens == 7


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "file_search"}]),
        ("tool_choice", {"type": "mcp"}),
        ("text", {"format": {"type": "grammar"}}),
    ],
)
def test_what_has_no_chat_shape_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        ResponseRequest.model_validate({"model": "m", "input": "x", field: value})
    assert caught.value.errors()[0]["loc"][0] == field


def parse(events: list[bytes]) -> list[object]:
    parsed = []
    for event in events:
        head, data = event.decode().rstrip("\n").split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert head == f"event: {payload['type']}"
        parsed.append(EVENTS.validate_python(payload))
    return parsed


def test_streamed_tool_call_deltas_become_function_call_events() -> None:
    writer = ResponseWriter(OurResponse(id="resp_1", status="in_progress", model="m"))
    events = writer.opening()
    events += writer.text("Let me look.")
    function = {"name": "get_weather", "arguments": ""}
    events += writer.tool_call(
        {"index": 0, "id": "call_1", "type": "function", "function": function}
    )
    for fragment in ('{"city": ', '"Paris"}'):
        events += writer.tool_call({"index": 0, "function": {"arguments": fragment}})
    events += writer.finish(
        "tool_calls", Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)
    )
    parsed = parse(events)
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))  # type: ignore[attr-defined]
    assert [e.type for e in parsed] == [  # type: ignore[attr-defined]
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # the message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # the function call, once the message is done
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(writer.response.model_dump(mode="json"))
    call = final.output[1]
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.call_id, call.name, call.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert final.output_text == "Let me look." and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 5
