"""OpenAI-style error bodies and the exception handlers that produce them.

Every error the server returns has the body `{"error": {"message", "type", "param", "code"}}` with `code` the
HTTP status (as vLLM's ErrorResponse). Engine exceptions map to statuses here and nowhere else:
InvalidParameterError (incl. PromptTooLongError) -> 400, EngineOverloadedError -> 503 + Retry-After,
EngineDeadError -> 503, anything unexpected -> 500 (the request middleware logs it with the request id).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from yaie.engine.errors import EngineDeadError, EngineOverloadedError
from yaie.types import InvalidParameterError

MAX_LISTED_ERRORS = 10
MAX_ECHOED_INPUT_CHARS = 100

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error answered with an OpenAI-style body; `headers` adds e.g. Retry-After."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


class RequestTooLargeError(HTTPException):
    """Raised while reading a body past the size limit. An HTTPException so FastAPI's body reader re-raises it."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit_bytes} bytes")


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "".join(HTTPStatus(status).phrase.split()) + "Error"


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": status}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.message, error.param), status_code=error.status,
                        headers=error.headers)


def overloaded(message: str, retry_after_s: float) -> APIError:
    return APIError(503, message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def api_error_from(exc: BaseException) -> APIError:
    """The status and body for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidParameterError):
        return APIError(400, str(exc), exc.param)
    if isinstance(exc, EngineOverloadedError):
        return overloaded(str(exc), exc.retry_after_s)
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc))
    return APIError(500, "internal server error")


def validation_error(errors: Sequence[Any]) -> APIError:
    """FastAPI's 422 as a 400: at most MAX_LISTED_ERRORS errors, echoed input capped; param = first field."""
    shown = [_describe_validation_error(e) for e in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        shown.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
    count = f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}"
    first_loc = _field_path(errors[0].get("loc", ())) if errors else ""
    return APIError(400, f"{count}: " + "; ".join(shown), first_loc or None)


def _describe_validation_error(error: Mapping[str, Any]) -> str:
    path = _field_path(error.get("loc", ())) or "body"
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    if kind == "missing":
        return f"{path}: field required" if path != "body" else "a JSON request body is required"
    if kind == "extra_forbidden":
        return f"{path}: unknown or unsupported field"
    return f"{path}: {error.get('msg', 'invalid value')} (got {_capped(error.get('input'))})"


def _field_path(loc: Sequence[Any]) -> str:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'; pydantic's union-branch tags are dropped."""
    parts: list[str] = []
    for item in loc:
        if item == "body" and not parts:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and ("[" in item or item in ("str", "int", "float", "bool")):
            continue  # a union branch tag such as 'list[int]'
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _capped(value: Any) -> str:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_ECHOED_INPUT_CHARS else text[: MAX_ECHOED_INPUT_CHARS - 3] + "..."


def install_exception_handlers(app: FastAPI) -> None:
    def respond(request: Request, error: APIError) -> JSONResponse:
        context = request.scope.get("yaie.context")
        if context is not None:
            context.error = error.message
        return error_response(error)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return respond(request, api_error_from(exc))

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, validation_error(exc.errors()))

    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return respond(request, APIError(exc.status_code, str(exc.detail), headers=exc.headers))

    for error_class in (APIError, InvalidParameterError, EngineOverloadedError, EngineDeadError):
        app.add_exception_handler(error_class, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http)  # type: ignore[arg-type]
