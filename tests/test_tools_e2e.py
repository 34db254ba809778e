"""Tool calls and structured output through the real API and a fake worker, with the openai
client: the reply shapes (whole and streamed), the stream helpers, history rendering, and
every parameter a backend does not honour refused with its name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import module_stack
from tests.helpers import RedisServer, Stack

pytestmark = pytest.mark.e2e

CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 8
[models.options]
itl_ms = 1

[[models]]
name = "echo"
backend = "fake"
[models.options]
echo = true

[[models]]
name = "tf"
backend = "transformers"
min_workers = 0
[models.options]
model = "/nowhere"
"""

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
        },
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = module_stack(redis_server, tmp_path_factory.mktemp("tools"), CONFIG)
    stack.start_api()
    stack.start_worker("fake")
    stack.start_worker("echo")
    yield stack
    stack.stop()


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)


def test_a_named_tool_choice_returns_that_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"zone": "xxxx"}  # type: ignore[union-attr]


def test_a_required_call_validates_against_the_tool_schema(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="required",
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)  # type: ignore[union-attr]


def test_streamed_calls_come_as_openai_streams_them(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake",
            messages=ASK,  # type: ignore[arg-type]
            tools=TOOLS,
            tool_choice="required",
            stream=True,
        )
    )
    pieces = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
    first, rest = pieces[0], pieces[1:]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert rest and all(p.id is None and p.function and p.function.name is None for p in rest)
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    jsonschema.validate(json.loads(arguments), WEATHER_SCHEMA)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_stream_helper_reassembles_the_call(client: openai.OpenAI) -> None:
    with client.beta.chat.completions.stream(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "xxxx", "unit": "c"}


def test_auto_calls_then_answers_after_the_result(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = message.tool_calls or []
    history = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    second = client.chat.completions.create(model="fake", messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_tool_history_reaches_the_prompt(client: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
    }
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
    ]
    reply = client.chat.completions.create(
        model="echo",
        messages=history,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice="none",
        max_tokens=500,
    )
    prompt = reply.choices[0].message.content or ""
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"' in prompt
    assert "<tool_response>\n21 degrees\n</tool_response>" in prompt


def test_legacy_functions_answer_with_function_call(client: openai.OpenAI) -> None:
    functions = [TOOLS[0]["function"]]
    reply = client.chat.completions.create(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        functions=functions,
        function_call={"name": "get_weather"},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call" and not choice.message.tool_calls
    assert choice.message.function_call is not None
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER_SCHEMA)
    chunks = list(
        client.chat.completions.create(
            model="fake",
            messages=ASK,  # type: ignore[arg-type]
            functions=functions,
            function_call={"name": "get_weather"},
            stream=True,
        )
    )
    pieces = [c.choices[0].delta.function_call for c in chunks if c.choices[0].delta.function_call]
    assert pieces[0].name == "get_weather"
    jsonschema.validate(json.loads("".join(p.arguments or "" for p in pieces)), WEATHER_SCHEMA)


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


def test_response_format_json_schema_and_parse(client: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    reply = client.chat.completions.create(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)
    parsed = client.beta.chat.completions.parse(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        response_format=Person,
    )
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and person.age == 1


def test_guided_choice_and_json(client: openai.OpenAI) -> None:
    choice = client.chat.completions.create(
        model="fake",
        messages=ASK,  # type: ignore[arg-type]
        extra_body={"guided_choice": ["sunny", "rainy"]},
    )
    assert choice.choices[0].message.content == "sunny"
    completion = client.completions.create(
        model="fake",
        prompt="weather:",
        max_tokens=100,
        extra_body={"structured_outputs": {"json": WEATHER_SCHEMA}},
    )
    jsonschema.validate(json.loads(completion.choices[0].text), WEATHER_SCHEMA)


FUNCTION: dict[str, Any] = {"type": "function", "function": {"name": "f"}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "s", "schema": WEATHER_SCHEMA}}


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        # what a backend does not honour
        ("fake", {"guided_regex": "[a-z]+"}, "guided_regex"),
        ("fake", {"guided_grammar": 'root ::= "a"'}, "guided_grammar"),
        ("fake", {"structured_outputs": {"regex": "a+"}}, "structured_outputs"),
        ("tf", {"tools": [FUNCTION], "tool_choice": "required"}, "tool_choice"),
        ("tf", {"tools": [FUNCTION], "tool_choice": FUNCTION}, "tool_choice"),
        ("tf", {"functions": [{"name": "f"}], "function_call": {"name": "f"}}, "function_call"),
        ("tf", {"response_format": {"type": "json_object"}}, "response_format"),
        ("tf", {"response_format": SCHEMA_FORMAT}, "response_format"),
        ("tf", {"guided_json": WEATHER_SCHEMA}, "guided_json"),
        ("tf", {"guided_choice": ["a", "b"]}, "guided_choice"),
        # what is malformed, on any backend
        (
            "fake",
            {"tools": [FUNCTION], "tool_choice": {**FUNCTION, "function": {"name": "g"}}},
            "tool_choice",
        ),
        ("fake", {"tool_choice": "required"}, "tool_choice"),
        ("fake", {"tools": [FUNCTION, FUNCTION]}, "tools"),
        (
            "fake",
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ]
            },
            "tools",
        ),
        (
            "fake",
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
        ),
        ("fake", {"tools": [FUNCTION], "functions": [{"name": "f"}]}, "tools"),
        ("fake", {"response_format": {"type": "xml"}}, "response_format"),
        ("fake", {"response_format": SCHEMA_FORMAT, "guided_choice": ["a"]}, "response_format"),
        ("fake", {"guided_json": "{not json"}, "guided_json"),
        ("fake", {"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    stack: Stack, model: str, extra: dict[str, Any], param: str
) -> None:
    body = {"model": model, "messages": ASK, **extra}
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_schemas_in_test_data_are_valid() -> None:
    for path in sorted(Path(__file__).parent.joinpath("data", "schemas").glob("*.json")):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text())["schema"])
