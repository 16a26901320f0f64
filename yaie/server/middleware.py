"""The one ASGI middleware every HTTP request passes through (pure ASGI: no per-chunk overhead on streams).

In order: take or make the request id (echoed as X-Request-Id); for /v1/* check the API key (401, constant-time
comparison), the declared body size (413; bodies without Content-Length are counted as they arrive) and
draining (503 + Retry-After); count HTTP errors by status; turn an unhandled exception into a logged 500;
write the access log line for /v1/* when the response is complete.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yaie.server.access_log import STATUS_CLIENT_CLOSED, RequestContext, write_access_log
from yaie.server.errors import APIError, RequestTooLargeError, error_response
from yaie.server.state import ServerState

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"
_REQUEST_ID_OK = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces, bounded


class RequestMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given_id = headers.get("x-request-id")
        request_id = given_id if given_id and _REQUEST_ID_OK.match(given_id) else uuid.uuid4().hex
        ctx = RequestContext(request_id, scope["method"], scope["path"])
        scope["yaie.context"] = ctx
        is_api = scope["path"].startswith(API_PREFIX)
        response = _Response(send, request_id, self.state)
        if is_api:
            self.state.num_in_flight += 1
        try:
            rejection = self._rejection(headers) if is_api else None
            if rejection is not None:
                ctx.error = rejection.message
                await error_response(rejection)(scope, receive, response.send)
            else:
                await self.app(scope, self._limit_body(receive), response.send)
        except Exception:
            logger.exception("internal error in request %s", request_id)
            ctx.error = "internal server error"
            if response.status is None:
                await error_response(APIError(500, "internal server error"))(scope, receive, response.send)
        finally:
            if is_api:
                self.state.num_in_flight -= 1
                ctx.status = response.status if response.is_complete else STATUS_CLIENT_CLOSED
                write_access_log(ctx)

    def _rejection(self, headers: Headers) -> APIError | None:
        config = self.state.config
        if config.api_key is not None and not _authorized(headers.get("authorization"), config.api_key):
            return APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                            headers={"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_request_bytes:
            return APIError(413, f"request body exceeds the limit of {config.max_request_bytes} bytes")
        if self.state.is_draining:
            return self.state.unavailable()
        return None

    def _limit_body(self, receive: Receive) -> Receive:
        limit = self.state.config.max_request_bytes
        num_received = 0

        async def limited_receive() -> Message:
            nonlocal num_received
            message = await receive()
            if message["type"] == "http.request":
                num_received += len(message.get("body", b""))
                if num_received > limit:
                    raise RequestTooLargeError(limit)
            return message

        return limited_receive


class _Response:
    """Wraps `send`: adds X-Request-Id, records the status and completion, counts error statuses."""

    def __init__(self, send: Send, request_id: str, state: ServerState) -> None:
        self._send = send
        self._request_id = request_id.encode()
        self._state = state
        self.status: int | None = None
        self.is_complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", []), (b"x-request-id", self._request_id)]
            if self.status >= 400:
                self._state.metrics.count_http_error(self.status)
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.is_complete = True
        await self._send(message)


def _authorized(authorization: str | None, api_key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
