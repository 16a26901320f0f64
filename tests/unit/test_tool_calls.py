"""Tool calling: request validation, the constraint grammar, the (streaming) output parser, rendering."""

from __future__ import annotations

import json

import pytest

from yaie.server.protocol import ChatCompletionRequest
from yaie.server.tool_calls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCallParser,
    ToolSetup,
    render_tool_conversation,
    tool_delta,
    tool_message,
)
from yaie.structured.specs import check_json_schema
from yaie.types import InvalidParameterError

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def setup(tool_choice: object = None, tools: list[dict] | None = None, parallel: bool | None = None) -> ToolSetup | None:
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=tools or [WEATHER, TIME],
                                    tool_choice=tool_choice, parallel_tool_calls=parallel)
    return ToolSetup.from_request(request.tools, request.tool_choice, request.parallel_tool_calls)


def block(name: str, arguments: dict) -> str:
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def test_tool_choice_modes() -> None:
    assert setup("none") is None
    auto = setup()
    assert auto is not None and auto.mode == "auto" and auto.constraint() is None and auto.parallel
    named = setup({"type": "function", "function": {"name": "get_time"}}, parallel=False)
    assert named is not None and named.mode == "named" and named.named == "get_time" and not named.parallel
    required = setup("required")
    assert required is not None and required.constraint() is not None


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [TIME, TIME]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}]},
         "tools[0].function.parameters"),
    ],
)
def test_invalid_tools_name_the_field(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        setup(**kwargs)
    assert info.value.param == param


def test_required_without_tools_is_rejected() -> None:
    with pytest.raises(InvalidParameterError, match="requires tools"):
        ToolSetup.from_request(None, "required", None)


def test_constraint_grammars_compile() -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        tools = setup(choice)
        assert tools is not None
        spec = tools.constraint()
        assert spec is not None and spec.kind == "grammar" and '"const": "get_weather"' in spec.payload
        assert ("get_time" in spec.payload) == (choice == "required")
    check_json_schema(json.dumps(WEATHER["function"]["parameters"]), "p")


def test_parser_separates_content_and_calls_across_any_split() -> None:
    text = "Let me check.\n" + block("get_weather", {"city": "Paris"}) + "\n" + block("get_time", {}) + "\n"
    for split in range(1, len(text)):
        parser = ToolCallParser({"get_weather", "get_time"})
        first_content, first_calls = parser.feed(text[:split])
        rest_content, rest_calls = parser.feed(text[split:], final=True)
        assert first_content + rest_content == "Let me check."  # whitespace before/between calls dropped
        assert [(c.name, json.loads(c.arguments)) for c in first_calls + rest_calls] == [
            ("get_weather", {"city": "Paris"}), ("get_time", {})]


def test_parser_keeps_unknown_or_broken_blocks_as_content() -> None:
    parser = ToolCallParser({"get_time"})
    text = block("delete_everything", {}) + " and " + TOOL_CALL_OPEN + "{oops"
    content, calls = parser.feed(text, final=True)
    assert calls == [] and content == text
    single = ToolCallParser({"get_time"}, parallel=False)
    content, calls = single.feed(block("get_time", {}) + "\n" + block("get_time", {}), final=True)
    assert len(calls) == 1 and content.strip() == block("get_time", {})


def test_messages_and_deltas() -> None:
    tools = setup()
    text = block("get_weather", {"city": "Oslo"})
    message, finish = tool_message(text, "stop", tools)
    assert finish == "tool_calls" and message.content is None and message.tool_calls is not None
    assert message.tool_calls[0].function.name == "get_weather" and message.tool_calls[0].id.startswith("call_")
    assert tool_message("plain", "length", tools) == (tool_message("plain", "length", None)[0], "length")
    assert tools is not None
    parser = tools.parser()
    first, finish_1 = tool_delta(parser, text[:20], None)
    second, finish_2 = tool_delta(parser, text[20:], "stop")
    assert first.model_dump() == {} and finish_1 is None
    dumped = second.model_dump()
    assert finish_2 == "tool_calls" and dumped["tool_calls"][0]["index"] == 0
    assert json.loads(dumped["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


def test_rendering_without_template_support() -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4C"},
        {"role": "tool", "tool_call_id": "c2", "content": "19C"},
    ]
    messages, template_tools = render_tool_conversation(conversation, setup(), template_takes_tools=False)
    assert template_tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\n") and '"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == block("get_weather", {"city": "Oslo"}) + "\n" + block("get_weather",
                                                                                          {"city": "Rome"})
    assert messages[3]["content"] == "<tool_response>\n4C\n</tool_response>\n<tool_response>\n19C\n</tool_response>"
    native, native_tools = render_tool_conversation(conversation, setup(), template_takes_tools=True)
    assert native_tools is not None and len(native_tools) == 2
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
