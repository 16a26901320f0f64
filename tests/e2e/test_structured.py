"""Structured output on the session server with the official client: json_schema (streamed and not),
json_object, guided_regex / guided_choice, invalid schemas, and max_tokens cutting a constrained output."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import ServerProcess

PERSON = {"type": "object", "required": ["name", "age", "city"], "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}}}
ORDER = {"type": "object", "required": ["customer", "items", "status"], "properties": {
    "customer": {"type": "object", "required": ["name", "vip"], "properties": {
        "name": {"type": "string", "maxLength": 20}, "vip": {"type": "boolean"}}},
    "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object", "required": ["sku", "qty"], "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "qty": {"type": "integer", "minimum": 1, "maximum": 9}}}},
    "status": {"type": "string", "enum": ["new", "paid", "shipped"]}}}
TAGS = {"type": "object", "required": ["title", "tags", "score"], "properties": {
    "title": {"type": "string", "maxLength": 30},
    "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "enum": ["red", "green", "blue"]}},
    "score": {"type": "number"}}}
CASES = [("person", PERSON, "Describe a person."), ("order", ORDER, "Create an order for a customer."),
         ("tags", TAGS, "Tag a painting of the sea.")]


def schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def ask(client: openai.OpenAI, model: str, prompt: str, stream: bool, max_tokens: int = 100,
        **extra: Any) -> tuple[str, str]:
    """(content, finish_reason) of one greedy chat completion, streamed or not."""
    request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                               "max_tokens": max_tokens, "temperature": 0, **extra}
    if not stream:
        choice = client.chat.completions.create(**request).choices[0]
        return choice.message.content or "", choice.finish_reason
    parts, finish = [], ""
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish


def test_json_schema_outputs_validate_streamed_and_not(client: openai.OpenAI, model: str) -> None:
    jobs = [(name, schema, prompt, False) for name, schema, prompt in CASES] + [(*CASES[0], True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: ask(client, model, job[2], job[3],
                                                response_format=schema_format(job[0], job[1])), jobs))
    for (name, schema, _, stream), (content, finish) in zip(jobs, results, strict=True):
        assert finish == "stop", (name, stream, content)
        document = json.loads(content)
        jsonschema.validate(document, schema)
        assert set(document) <= set(schema["properties"]), "strict mode allows no extra properties"


def test_json_object_regex_and_choice(client: openai.OpenAI, model: str) -> None:
    date = r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"
    jobs: list[tuple[str, dict[str, Any]]] = [
        ("Describe a dog in JSON.", {"response_format": {"type": "json_object"}, "max_tokens": 40}),
        ("Give a date.", {"extra_body": {"guided_regex": date}}),
        ("Is the sky blue? Answer yes or no.", {"extra_body": {"guided_choice": ["yes", "no", "maybe"]}}),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        (obj, obj_finish), (day, _), (answer, _) = pool.map(lambda j: ask(client, model, j[0], False, **j[1]), jobs)
    if obj_finish == "stop":
        assert isinstance(json.loads(obj), dict)
    else:
        assert obj_finish == "length" and obj.startswith("{")
    assert re.fullmatch(date, day)
    assert answer in ("yes", "no", "maybe")


def test_max_tokens_cuts_a_constrained_output_with_length(client: openai.OpenAI, model: str) -> None:
    content, finish = ask(client, model, "Create an order for a customer.", True, max_tokens=6,
                          response_format=schema_format("order", ORDER))
    assert finish == "length" and content.startswith('{"customer": ')


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"response_format": schema_format("bad", {"type": "object", "properties": {"a": {"type": "strin"}}})},
         "response_format.json_schema.schema", "Invalid type: strin"),
        ({"response_format": schema_format("bad", {"type": "object", "required": "a"})},
         "response_format.json_schema.schema", "required"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": PERSON}}}, "response_format", "name"),
        ({"guided_regex": "(open"}, "guided_regex", "unclosed group"),
        ({"guided_choice": []}, "guided_choice", "non-empty"),
    ],
)
def test_invalid_constraints_are_400(server: ServerProcess, model: str, body: dict[str, Any], param: str,
                                     fragment: str) -> None:
    with server.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]
