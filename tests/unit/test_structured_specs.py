"""OpenAI request fields -> StructuredSpec (response_format, guided_*), with the errors naming the field."""

from __future__ import annotations

import json

import pytest

from yaie.server.protocol import ChatCompletionRequest, CompletionRequest
from yaie.structured.specs import close_objects, response_format_spec
from yaie.types import InvalidParameterError, StructuredSpec

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "required": ["b"]}


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)


def test_response_formats() -> None:
    assert response_format_spec(None) is None and response_format_spec({"type": "text"}) is None
    assert response_format_spec({"type": "json_object"}) == StructuredSpec("json_object")
    spec = response_format_spec({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    assert spec is not None and spec.kind == "json_schema"
    assert list(json.loads(spec.payload)["properties"]) == ["b", "a"]  # property order is kept
    assert "additionalProperties" not in json.loads(spec.payload)


def test_strict_closes_every_object_schema() -> None:
    spec = response_format_spec({"type": "json_schema",
                                 "json_schema": {"name": "x", "strict": True, "schema": {
                                     "type": "object", "properties": {"inner": SCHEMA, "list": {
                                         "type": "array", "items": SCHEMA}}}}})
    assert spec is not None
    schema = json.loads(spec.payload)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["inner"]["additionalProperties"] is False
    assert schema["properties"]["list"]["items"]["additionalProperties"] is False
    assert close_objects({"type": "object", "properties": {}, "additionalProperties": True})[
        "additionalProperties"] is True


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"response_format": {"type": "xml"}}, "response_format", "'xml'"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "'name'"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "strin"}}}}}},
         "response_format.json_schema.schema", "Invalid type: strin"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "$ref": "#/$defs/missing"}}}}, "response_format.json_schema.schema", "does not exist"),
        ({"guided_regex": "(unclosed"}, "guided_regex", "unclosed group"),
        ({"guided_choice": []}, "guided_choice", "non-empty"),
        ({"guided_json": [1]}, "guided_json", "JSON schema object"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "only one"),
    ],
)
def test_invalid_constraints_name_the_field(fields: dict[str, object], param: str, fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        chat(**fields).sampling_params(max_tokens=8, logprobs=None)
    assert info.value.param == param and fragment in str(info.value)


def test_guided_fields_become_sampling_constraints() -> None:
    params = chat(guided_choice=["yes", "no"]).sampling_params(max_tokens=8, logprobs=None)
    assert params.structured == StructuredSpec("choice", '["yes", "no"]')
    completion = CompletionRequest(prompt="x", guided_regex="[0-9]+").sampling_params(8, None)
    assert completion.structured == StructuredSpec("regex", "[0-9]+")
    assert chat().sampling_params(max_tokens=8, logprobs=None).structured is None
