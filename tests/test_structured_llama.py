"""Constrained generation on the real llama.cpp engine with gemma-3-270m, end to end through
the openai client: tool calls whose arguments validate, the 20-schema suite, parse(), regex
and choice; and the openai backend passing tools through to llama-cpp-python's own server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import module_stack
from tests.engines import SPECS, LlamaServer
from tests.helpers import RedisServer, Stack

# Each reply is a real generation on a CPU the suite shares: give a test more than the default.
pytestmark = [pytest.mark.e2e, pytest.mark.llama, pytest.mark.slow, pytest.mark.timeout(1200)]

CONFIG = """
[[models]]
name = "gemma"
backend = "llama_cpp"
context_length = 2048
[models.options]
n_threads = 2
"""

SCHEMAS = sorted(Path(__file__).parent.joinpath("data", "schemas").glob("*.json"))
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if SPECS["llama_cpp"].missing():
        pytest.skip("llama-cpp-python is not installed")
    stack = module_stack(redis_server, tmp_path_factory.mktemp("structured"), CONFIG)
    stack.start_api()
    stack.start_worker("gemma")
    yield stack
    stack.stop()


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0, timeout=600
    )


def test_a_named_call_parses_and_validates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gemma",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)  # type: ignore[union-attr]


def test_a_required_call_streams_and_reassembles(client: openai.OpenAI) -> None:
    with client.beta.chat.completions.stream(
        model="gemma",
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
        max_tokens=300,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    schema = next(t for t in TOOLS if t["function"]["name"] == call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), schema["function"]["parameters"])


@pytest.mark.parametrize("path", SCHEMAS, ids=[p.stem for p in SCHEMAS])
def test_json_schema_replies_validate(client: openai.OpenAI, path: Path) -> None:
    case = json.loads(path.read_text())
    reply = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": f"Answer in JSON. {case['prompt']}"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": path.stem, "schema": case["schema"], "strict": True},
        },
        temperature=0,
        max_tokens=400,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content or ""), case["schema"])


class City(BaseModel):
    name: str
    country: str
    population: int


def test_parse_returns_the_model(client: openai.OpenAI) -> None:
    parsed = client.beta.chat.completions.parse(
        model="gemma",
        messages=[{"role": "user", "content": "Describe Paris in JSON."}],
        response_format=City,
        temperature=0,
        max_tokens=200,
    )
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_guided_regex_and_choice(client: openai.OpenAI) -> None:
    phone = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Give me a phone number."}],
        max_tokens=20,
        extra_body={"guided_regex": r"\d{3}-\d{4}"},
    )
    assert _matches(r"\d{3}-\d{4}", phone.choices[0].message.content)
    answer = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert answer.choices[0].message.content in ("yes", "no")


def _matches(pattern: str, text: str | None) -> bool:
    import re

    return re.fullmatch(pattern, text or "") is not None


# --------------------------------------------------------------------- openai pass-through


@pytest.fixture(scope="module")
def proxy(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, upstream: LlamaServer
) -> Iterator[openai.OpenAI]:
    config = f"""
[[models]]
name = "proxy"
backend = "openai"
max_concurrency = 2
[models.options]
base_url = "{upstream.base_url}"
model = "upstream-gemma"
"""
    stack = module_stack(redis_server, tmp_path_factory.mktemp("proxy"), config)
    stack.start_api()
    stack.start_worker("proxy")
    yield openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0, timeout=600)
    stack.stop()


UNIT = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}
UNIT_TOOL: Any = {"type": "function", "function": {"name": "pick_unit", "parameters": UNIT}}


@pytest.mark.upstream
def test_the_openai_backend_passes_tool_calls_through(proxy: openai.OpenAI) -> None:
    arguments = {"model": "proxy", "messages": ASK, "tools": [UNIT_TOOL], "max_tokens": 30}
    named = {"type": "function", "function": {"name": "pick_unit"}}
    reply = proxy.chat.completions.create(**arguments, tool_choice=named)
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "pick_unit"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), UNIT)  # type: ignore[union-attr]
    with proxy.beta.chat.completions.stream(**arguments, tool_choice=named) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    jsonschema.validate(json.loads(streamed.function.arguments), UNIT)


@pytest.mark.upstream
def test_the_openai_backend_passes_response_format_through(proxy: openai.OpenAI) -> None:
    reply = proxy.chat.completions.create(
        model="proxy",
        messages=[{"role": "user", "content": "Celsius or fahrenheit?"}],
        # llama-cpp-python's server takes a schema in json_object (it refuses json_schema)
        response_format={"type": "json_object", "schema": UNIT},  # type: ignore[typeddict-unknown-key]
        max_tokens=30,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), UNIT)
