"""Tool calling on the session server with the official client: auto / required / named, streamed and not
(assembled by the SDK), parallel_tool_calls=false, a tool-result round trip, and errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai

from tests.e2e.conftest import ServerProcess, stream_raw
from tests.e2e.openai_schema import validate

WEATHER_PARAMS = {"type": "object", "required": ["city", "unit"], "properties": {
    "city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME_PARAMS = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string", "maxLength": 30}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER_PARAMS}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                           "parameters": TIME_PARAMS}}]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def base(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": QUESTION, "tools": TOOLS, "temperature": 0, "max_tokens": 60, **extra}


def assert_valid_calls(tool_calls: Any, names: set[str]) -> None:
    assert tool_calls
    for call in tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_auto_required_and_named(client: openai.OpenAI, model: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}

    def streamed_named() -> Any:
        with client.chat.completions.stream(**base(model, tool_choice=named)) as stream:
            for _ in stream:
                pass
            return stream.get_final_completion().choices[0]

    with ThreadPoolExecutor(3) as pool:
        required = pool.submit(lambda: client.chat.completions.create(**base(model, tool_choice="required",
                                                                             max_tokens=160)))
        streamed = pool.submit(streamed_named)
        auto = pool.submit(lambda: client.chat.completions.create(**base(model, tool_choice="auto", max_tokens=20)))
    choice = required.result().choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert_valid_calls(choice.message.tool_calls, {"get_weather", "get_time"})
    choice = streamed.result()
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls, {"get_time"})
    assert len(choice.message.tool_calls) == 1
    choice = auto.result().choices[0]  # the model may answer in text or call a tool
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message.tool_calls, {"get_weather", "get_time"})
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_streamed_tool_call_chunks_follow_the_schema(server: ServerProcess, model: str) -> None:
    with server.http() as http:
        payloads = stream_raw(http, "/v1/chat/completions", base(model, tool_choice="required",
                                                                 parallel_tool_calls=False))
    chunks = payloads[:-1]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_result_round_trip(server: ServerProcess, client: openai.OpenAI, model: str) -> None:
    with server.http() as http:
        first = http.post("/v1/chat/completions", json=base(model, tool_choice="required",
                                                            parallel_tool_calls=False)).json()
    validate(first, "CreateChatCompletionResponse")
    call = first["choices"][0]["message"]["tool_calls"][0]
    result = json.dumps({"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "clear"})
    follow_up = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": result}]
    second = client.chat.completions.create(model=model, messages=follow_up, tools=TOOLS, temperature=0,
                                            max_tokens=8)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage.prompt_tokens > first["usage"]["prompt_tokens"] + 20  # the call and result are rendered


def test_tool_errors(server: ServerProcess, model: str) -> None:
    with server.http() as http:
        unknown = http.post("/v1/chat/completions", json=base(model, tool_choice={
            "type": "function", "function": {"name": "launch_rockets"}}))
        conflict = http.post("/v1/chat/completions", json=base(model, tool_choice="required",
                                                               response_format={"type": "json_object"}))
        bad_schema = http.post("/v1/chat/completions", json={**base(model), "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tool_choice"
    assert conflict.status_code == 400 and conflict.json()["error"]["param"] == "tool_choice"
    assert bad_schema.status_code == 400 and bad_schema.json()["error"]["param"] == "tools[0].function.parameters"
