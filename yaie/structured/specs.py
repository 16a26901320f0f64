"""OpenAI request fields -> StructuredSpec: response_format (json_object / json_schema) and our extensions
guided_json, guided_regex and guided_choice. Validation errors raise InvalidParameterError naming the field.

A JSON schema's payload is its compact JSON with the key order kept (property order is the order the model
writes them in, so it is part of the constraint); equal schemas give equal payloads and share one compiled
grammar. In strict mode (OpenAI's `strict: true`), an object schema that does not say otherwise gets
`additionalProperties: false`, which is what strict mode requires of the schemas OpenAI accepts.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from yaie.types import InvalidParameterError, StructuredSpec

# JSON is generated compactly apart from one space after ',' and ':' (how models write JSON by default):
# flexible whitespace would let a small model loop on newlines until max_tokens.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_VALUES = ("items", "additionalItems", "not", "if", "then", "else", "contains")


def response_format_spec(response_format: Any) -> StructuredSpec | None:
    """None for {"type": "text"} (or no response_format); a spec for json_object / json_schema."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise InvalidParameterError("response_format", "response_format must be an object with a 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredSpec("json_object")
    if kind != "json_schema":
        raise InvalidParameterError("response_format", f"response_format.type must be 'text', 'json_object' or "
                                                       f"'json_schema', got {kind!r}")
    wrapper = response_format.get("json_schema")
    if not isinstance(wrapper, dict) or not isinstance(wrapper.get("name"), str):
        raise InvalidParameterError("response_format", "response_format.json_schema must be an object with a "
                                                       "'name' and a 'schema'")
    schema = wrapper.get("schema", {"type": "object"})
    return json_schema_spec(schema, bool(wrapper.get("strict")), "response_format.json_schema.schema")


def json_schema_spec(schema: Any, strict: bool, param: str) -> StructuredSpec:
    """A json_schema spec for `schema`, checked now so that an invalid schema is a 400 naming `param`."""
    if not isinstance(schema, dict | bool):
        raise InvalidParameterError(param, f"{param} must be a JSON schema object, got {type(schema).__name__}")
    if strict and isinstance(schema, dict):
        schema = close_objects(schema)
    payload = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    check_json_schema(payload, param)
    return StructuredSpec("json_schema", payload)


def check_json_schema(schema_json: str, param: str) -> None:
    """Raise InvalidParameterError(param) when llguidance cannot compile the schema (unknown type or format,
    a dangling $ref, a keyword it does not implement, ...), with its explanation."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise InvalidParameterError(param, f"{param} is not a valid JSON schema: {exc}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise InvalidParameterError(param, f"{param} is not a supported JSON schema: {_one_line(error)}")


def regex_spec(pattern: str) -> StructuredSpec:
    if not pattern:
        raise InvalidParameterError("guided_regex", "guided_regex must not be empty")
    error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_regex(pattern))
    if error and not error.startswith("WARNING"):
        raise InvalidParameterError("guided_regex", f"guided_regex is not a valid regular expression: "
                                                    f"{_one_line(error)}")
    return StructuredSpec("regex", pattern)


def choice_spec(choices: list[str]) -> StructuredSpec:
    if not choices or any(not isinstance(c, str) or not c for c in choices):
        raise InvalidParameterError("guided_choice", "guided_choice must be a non-empty list of non-empty strings")
    return StructuredSpec("choice", json.dumps(choices, ensure_ascii=False))


def close_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` where every object schema with `properties` and no `additionalProperties` gets
    `additionalProperties: false` (recursively, through every subschema keyword)."""
    result = dict(schema)
    if "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    for key in _SUBSCHEMA_MAPS:
        if isinstance(result.get(key), dict):
            result[key] = {name: _close(sub) for name, sub in result[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(result.get(key), list):
            result[key] = [_close(sub) for sub in result[key]]
    for key in _SUBSCHEMA_VALUES:
        if key in result:
            result[key] = _close(result[key])
    return result


def _close(subschema: Any) -> Any:
    return close_objects(subschema) if isinstance(subschema, dict) else subschema


def _one_line(message: str) -> str:
    return " ".join(message.split())
