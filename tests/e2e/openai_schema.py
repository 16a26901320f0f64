"""Validate JSON bodies against OpenAI's published OpenAPI schemas (shared/openai-openapi/openapi.json).

The description mixes OpenAPI 3.0's `nullable: true` into 3.1 JSON Schema; it is rewritten to
`anyOf: [..., {"type": "null"}]` before validation.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "openai-openapi" / "openapi.json"


@functools.cache
def _components() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.fail(f"OpenAI OpenAPI description not found at {SPEC_PATH} (shared/ must sit beside the repo)")
    return _nullable_to_anyof(json.loads(SPEC_PATH.read_text())["components"])


def _nullable_to_anyof(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_to_anyof(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _nullable_to_anyof(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def validate(body: dict[str, Any], schema_name: str) -> None:
    """Raise jsonschema.ValidationError if `body` does not match components/schemas/<schema_name>."""
    import jsonschema

    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": _components()}
    jsonschema.Draft202012Validator(schema).validate(body)


def validate_completion_chunk(chunk: dict[str, Any]) -> None:
    """A /v1/completions stream chunk. The spec describes only the whole response; chunks differ in that
    finish_reason is null until a choice ends and, with include_usage, usage is null until the last chunk."""
    patched = json.loads(json.dumps(chunk))
    if patched.get("usage", 0) is None:
        del patched["usage"]
    for choice in patched["choices"]:
        if choice.get("finish_reason") is None:
            choice["finish_reason"] = "stop"
    validate(patched, "CreateCompletionResponse")
