"""/v1/responses with function tools, end to end on the fake engine's scripted tool calls."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import FAKE_CONFIG, module_stack
from tests.helpers import RedisServer, Stack

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def client(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    stack: Stack = module_stack(redis_server, tmp_path_factory.mktemp("rtools"), FAKE_CONFIG)
    stack.start_api()
    stack.start_worker("fake")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    try:
        _serves_tools(client)
        yield client
    finally:
        stack.stop()


def _serves_tools(client: openai.OpenAI) -> None:
    """Skip while chat tool calls (issue 14, part A) are not on this branch yet."""
    chat_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    try:
        client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "x"}],
            tools=[chat_tool],  # type: ignore[list-item]
        )
    except openai.BadRequestError as exc:
        if isinstance(exc.body, dict) and exc.body.get("param") == "tools":
            pytest.skip("chat tool calls are not served on this branch yet")
        raise


def test_a_function_call_and_its_result(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="fake",
        input=QUESTION,
        tools=[WEATHER],
        tool_choice="required",  # type: ignore[list-item]
    )
    assert first.status == "completed"
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id and call.status == "completed"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    second = client.responses.create(
        model="fake",
        previous_response_id=first.id,
        input=[result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=4,
    )
    # auto, after the tool's result: the fake answers with text (cut at max_output_tokens)
    assert second.status == "incomplete" and second.output_text
    assert all(item.type == "message" for item in second.output)


def test_the_whole_exchange_as_input_items(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="fake",
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=4,
        input=[
            {"role": "user", "content": QUESTION},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    )
    assert reply.output_text and reply.output[0].type == "message"


def test_a_streamed_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="fake",
        input=QUESTION,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in types
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == deltas and json.loads(deltas)["city"]
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_auto_lets_the_model_call(client: openai.OpenAI) -> None:
    reply = client.responses.create(model="fake", input=QUESTION, tools=[WEATHER])  # type: ignore[list-item]
    assert [item.type for item in reply.output][-1] == "function_call"
