"""The pieces of tool calling and structured output, without processes: parsing generated text
into calls, writing tool history as text, grammars, coalescing and chunk templates."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest

from llmspool.consumers import tools
from llmspool.consumers.backends import BACKENDS, gemma
from llmspool.consumers.backends.base import Delta, Prompt
from llmspool.consumers.backends.fake import example
from llmspool.consumers.backends.gbnf import bounded, expand_classes
from llmspool.consumers.publisher import coalesce_tool_call
from llmspool.producer.responses import ChunkWriter
from llmspool.shared import capabilities
from llmspool.shared.messages import JobKind, ReplyFrame, ReplyMeta
from llmspool.shared.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCallDelta,
    FunctionDefinition,
    ToolCallDelta,
    assemble_tool_calls,
)

WEATHER = FunctionDefinition(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
AUTO = tools.OutputPlan(functions=(WEATHER,), choice="auto")
REQUIRED = tools.OutputPlan(functions=(WEATHER,), choice="required")


async def _deltas(pieces: list[str], finish: str = "stop") -> AsyncIterator[Delta]:
    for piece in pieces:
        yield Delta(text=piece, tokens=1)
    yield Delta(finish_reason=finish)  # type: ignore[arg-type]


async def _shape(plan: tools.OutputPlan, pieces: list[str], finish: str = "stop") -> list[Delta]:
    return [d async for d in tools.shaped(plan, _deltas(pieces, finish))]


def _text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def _calls(deltas: list[Delta]) -> list[ToolCallDelta]:
    return [c for d in deltas for c in d.tool_calls or []]


async def test_a_constrained_call_streams_name_first_then_arguments() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    deltas = await _shape(REQUIRED, [text[i : i + 3] for i in range(0, len(text), 3)])
    pieces = _calls(deltas)
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    (call,) = assemble_tool_calls(pieces)
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.function.arguments == '{"city": "Paris"}'
    assert deltas[-1].finish_reason == "tool_calls" and _text(deltas) == ""
    assert sum(d.tokens for d in deltas) == len(range(0, len(text), 3))


async def test_a_cut_call_keeps_length_and_its_arguments() -> None:
    deltas = await _shape(REQUIRED, ['{"name": "get_weather", "arguments": {"ci'], "length")
    assert deltas[-1].finish_reason == "length"
    assert assemble_tool_calls(_calls(deltas))[0].function.arguments == '{"ci'


@pytest.mark.parametrize(
    "pieces",
    [
        [
            "Let me look. <tool_call>",
            '{"name": "get_weather", "arguments": {"city": "Rome"}}',
            "</tool_call>",
        ],
        ["Let me look. <tool", '_call>{"name": "get_weather", ', '"arguments": {"city": "Rome"}}'],
    ],
)
async def test_auto_parses_tool_call_blocks(pieces: list[str]) -> None:
    deltas = await _shape(AUTO, pieces)
    assert _text(deltas) == "Let me look. "
    (call,) = assemble_tool_calls(_calls(deltas))
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Rome"
    }
    assert deltas[-1].finish_reason == "tool_calls"


async def test_auto_parses_a_bare_json_call_and_leaves_other_json_as_text() -> None:
    deltas = await _shape(AUTO, ['{"name": "get_weather", "arguments": {}}'])
    assert assemble_tool_calls(_calls(deltas))[0].function.arguments == "{}"
    other = await _shape(AUTO, ['{"city": ', '"Oslo"}'])
    assert _text(other) == '{"city": "Oslo"}' and not _calls(other)
    assert other[-1].finish_reason == "stop"


async def test_auto_keeps_text_that_only_looks_like_a_call() -> None:
    deltas = await _shape(AUTO, ["a <tool_call>not json", " at all"])
    assert _text(deltas) == "a <tool_call>not json at all" and not _calls(deltas)
    plain = await _shape(AUTO, ["just ", "text <tool"])
    assert _text(plain) == "just text <tool"


def test_tool_history_is_written_into_the_gemma_prompt() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "tools": [{"type": "function", "function": WEATHER.model_dump()}],
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
            ],
        }
    )
    plan = tools.OutputPlan(functions=tuple(request.function_tools()), choice="auto")
    prompt = tools.plain_prompt(Prompt(messages=tuple(request.messages)), plan)
    rendered = gemma.render(prompt.messages)
    assert "You can call these functions" in rendered
    assert (
        '<start_of_turn>model\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
        in rendered
    )
    assert "<start_of_turn>user\n<tool_response>\n-3 C\n</tool_response>" in rendered


def test_a_plain_prompt_is_left_alone() -> None:
    prompt = Prompt(messages=(ChatMessage(role="user", content="hi"),))
    assert tools.plain_prompt(prompt, tools.PLAIN) is prompt


def test_call_schema_forces_the_named_function() -> None:
    other = FunctionDefinition(name="other")
    schema = tools.call_schema([WEATHER, other], "other")
    assert schema["properties"]["name"] == {"const": "other"}
    assert schema["properties"]["arguments"] == tools.NO_ARGUMENTS
    assert len(tools.call_schema([WEATHER, other])["anyOf"]) == 2


def test_regex_classes_are_spelled_out_and_arrays_bounded() -> None:
    assert expand_classes(r"\d+-[\w.]\s\.") == r"[0-9]+-[a-zA-Z0-9_.][ \t\n\r]\."
    schema = bounded({"type": "array", "items": {"type": "array", "minItems": 9}})
    assert schema["maxItems"] == 5 and schema["items"]["maxItems"] == 9
    nullable = bounded({"type": ["string", "null"], "description": "d"})
    assert nullable == {
        "anyOf": [
            {"type": "string", "description": "d", "maxLength": 64},
            {"type": "null", "description": "d"},
        ]
    }
    assert "maxLength" not in bounded({"type": "string", "enum": ["a"]})


def test_fake_examples_follow_the_schema() -> None:
    for path in sorted(Path(__file__).parent.glob("data/schemas/*.json")):
        schema = json.loads(path.read_text())["schema"]
        if "$defs" not in schema:  # the fake engine does not follow references
            jsonschema.validate(example(schema), schema)


def test_argument_fragments_coalesce_into_one_piece_per_call() -> None:
    calls: list[ToolCallDelta] = []
    head = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="f", arguments="")
    )
    for piece in (
        head,
        *(ToolCallDelta(index=0, function=FunctionCallDelta(arguments=a)) for a in ("{", "}")),
    ):
        coalesce_tool_call(calls, piece)
    assert len(calls) == 1 and calls[0].function is not None
    assert calls[0].function.arguments == "{}" and head.function.arguments == ""  # type: ignore[union-attr]


def test_tool_call_chunks_are_openai_shaped() -> None:
    meta = ReplyMeta(request_id="chatcmpl-1", kind=JobKind.CHAT, model="m", created=5, deadline=9)
    piece = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="f", arguments="")
    )
    (event,) = ChunkWriter(meta).frame(ReplyFrame(request_id="r", seq=1, tool_calls=[piece]))
    chunk = json.loads(event.removeprefix(b"data: "))
    assert chunk["choices"][0]["delta"] == {"tool_calls": [piece.model_dump(exclude_none=True)]}
    assert chunk["id"] == "chatcmpl-1" and chunk["created"] == 5


def test_every_backend_declares_what_it_honours() -> None:
    assert set(capabilities.TABLE) == set(BACKENDS)
    assert capabilities.of("transformers").tool_choices == {"auto"}
    assert "guided_regex" in capabilities.of("llama_cpp").listed()
