"""OpenAI-style error bodies and the 422 -> 400 mapping (yaie/server/errors.py)."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from yaie.engine.errors import EngineDeadError, EngineOverloadedError, PromptTooLongError
from yaie.server.errors import (
    MAX_ECHOED_INPUT_CHARS,
    MAX_LISTED_ERRORS,
    api_error_from,
    error_body,
    validation_error,
)
from yaie.server.protocol import ChatCompletionRequest
from yaie.types import InvalidParameterError


def request_errors(body: dict[str, object]) -> list[dict[str, object]]:
    try:
        ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        # what FastAPI reports: locations prefixed with "body"
        return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]).errors()
    raise AssertionError("expected a validation error")


def test_error_body_shape() -> None:
    assert error_body(404, "no such model", "model") == {
        "error": {"message": "no such model", "type": "NotFoundError", "param": "model", "code": 404}}
    assert error_body(500, "x")["error"]["type"] == "InternalServerError"
    assert error_body(429, "x")["error"]["type"] == "TooManyRequestsError"


def test_engine_exceptions_map_to_statuses() -> None:
    too_long = api_error_from(PromptTooLongError("input_tokens", "too long"))
    assert (too_long.status, too_long.param) == (400, "input_tokens")
    assert api_error_from(InvalidParameterError("top_p", "bad")).param == "top_p"
    busy = api_error_from(EngineOverloadedError("queue full", retry_after_s=2.5))
    assert busy.status == 503 and busy.headers == {"Retry-After": "3"}
    assert api_error_from(EngineDeadError("dead")).status == 503
    assert api_error_from(RuntimeError("boom")).status == 500


def test_validation_error_names_first_field_and_paths() -> None:
    error = validation_error(request_errors({"messages": [{"role": "wizard", "content": "x"}]}))
    assert error.status == 400 and error.param == "messages[0].role"
    both = validation_error(request_errors({"messages": [{"role": "wizard", "content": "x"}], "n": "two"}))
    assert both.message.startswith("2 validation errors")
    assert "messages[0].role: " in both.message and 'n: Input should be a valid integer' in both.message


def test_unknown_field_message() -> None:
    error = validation_error(request_errors({"messages": [{"role": "user", "content": "x"}], "suffix": "s"}))
    assert error.param == "suffix" and "unknown or unsupported field" in error.message


def test_at_most_ten_errors_listed_and_input_capped() -> None:
    errors = request_errors({
        "messages": [{"role": "nobody", "content": "x" * 10_000}] * 30,
    })
    assert len(errors) > MAX_LISTED_ERRORS
    error = validation_error(errors)
    assert error.message.count("messages[") == MAX_LISTED_ERRORS
    assert f"and {len(errors) - MAX_LISTED_ERRORS} more" in error.message
    assert len(error.message) < MAX_LISTED_ERRORS * (MAX_ECHOED_INPUT_CHARS + 200)


def test_invalid_json_and_missing_body() -> None:
    bad_json = validation_error([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error",
                                  "input": {}, "ctx": {"error": "Expecting value"}}])
    assert "not valid JSON" in bad_json.message
    missing = validation_error([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    assert "request body is required" in missing.message and missing.param is None
