"""The gateway's ASGI middleware, inside the server's request middleware (which made the request id and the
RequestContext, checks body size and draining, and writes the access log).

For every /v1/* request: authenticate the key (401; unknown keys never reach the database twice a second).
For POST chat/completions/embeddings: read the body, check the key's model scope (404 as if absent), apply the
key's PII mode (block: 400 naming the entity types; redact: typed placeholders replace entities before the
model sees the prompt), count prompt tokens with the served model's own tokenizer and chat template, admit
(concurrency, RPM, TPM reservation of prompt + max completion tokens, budget hold; 429 otherwise), run the
request with the rewritten body, add x-ratelimit-* headers, and when the response is complete settle with the
actual usage the serving layer recorded in the RequestContext. GET /v1/models lists only the key's models.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yaie.gateway.budget import QuotaExceededError
from yaie.gateway.keys import KeyRecord
from yaie.gateway.models import utcnow
from yaie.gateway.pii_request import PIIBlockedError, PIIUnscannableError, apply_pii, redact_completion_body
from yaie.gateway.rate_limit import LimitExceededError
from yaie.gateway.service import Admission, Gateway, Usage
from yaie.gateway.tokens import count_request_tokens
from yaie.server.errors import APIError, RequestTooLargeError, error_response
from yaie.server.state import ServerState

GENERATION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
STATUS_CLIENT_CLOSED = 499
Transform = Callable[[bytes], bytes]


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, gateway: Gateway, state: ServerState) -> None:
        self.app = app
        self.gateway = gateway
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        scope["yaie.gateway_started"] = time.perf_counter()
        record, error = await self._authenticate(Headers(scope=scope))
        if record is None:
            await _answer(scope, receive, send, error)
            return
        kind = GENERATION_PATHS.get(scope["path"]) if scope["method"] == "POST" else None
        if kind is not None:
            await self._generation(kind, record, scope, receive, send)
        elif scope["path"] == "/v1/models" and record.spec.models is not None:
            allowed = set(record.spec.models)
            await _forward(self.app, scope, receive, send, None, lambda body: _only_models(body, allowed))
        else:
            await self.app(scope, receive, send)

    async def _authenticate(self, headers: Headers) -> tuple[KeyRecord | None, APIError]:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        unauthorized = APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                headers={"WWW-Authenticate": "Bearer"})
        record = await self.gateway.keys.lookup(token.strip()) if scheme.lower() == "bearer" and token else None
        if record is None:
            self._count("unauthorized")
            return None, unauthorized
        if not record.is_usable(utcnow()):
            status = record.status(utcnow())
            self.gateway.refuse(record, "", None, "", 401, "denied", f"key {status}")
            return None, APIError(401, f"this API key is {status}", headers={"WWW-Authenticate": "Bearer"})
        return record, unauthorized

    async def _generation(self, kind: str, record: KeyRecord, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(receive)
        except RequestTooLargeError as exc:
            await _answer(scope, receive, send, APIError(413, str(exc.detail)))
            return
        if body is None:
            return  # the client went away
        request = _json_object(body)
        if request is None or self.state.servings is None:
            await self.app(scope, _replay(body, receive), send)  # invalid JSON (400) or not ready (503)
            return
        ctx = scope.get("yaie.context")
        request_id = ctx.request_id if ctx is not None else ""
        model = self._model_of(kind, request)
        user = request.get("user") if isinstance(request.get("user"), str) else None
        admission_or_error = await self._admit(kind, record, request, model, user, request_id)
        if isinstance(admission_or_error, APIError):
            if ctx is not None:
                ctx.error = admission_or_error.message
            await _answer(scope, receive, send, admission_or_error)
            return
        admission, new_body = admission_or_error
        await self._run(kind, admission, request, new_body or body, scope, receive, send)

    async def _admit(self, kind: str, record: KeyRecord, request: dict[str, Any], model: str, user: str | None,
                     request_id: str) -> APIError | tuple[Admission, bytes]:
        gateway = self.gateway
        if not record.allows_model(model):
            gateway.refuse(record, model, user, request_id, 404, "denied", "model not allowed for this key")
            return APIError(404, f"the model {model!r} does not exist", "model")
        pii_types: tuple[str, ...] = ()
        if record.spec.pii_mode != "off":
            try:
                counts = await apply_pii(kind, request, record.spec.pii_mode, await gateway.pii_scanner())
            except (PIIBlockedError, PIIUnscannableError) as exc:
                found = getattr(exc, "entity_counts", {})
                self._count_pii(found, "prompt", "blocked")
                gateway.refuse(record, model, user, request_id, 400, "blocked", str(exc), tuple(sorted(found)))
                return APIError(400, str(exc), "messages" if kind == "chat" else "prompt")
            self._count_pii(counts, "prompt", "redacted")
            pii_types = tuple(sorted(counts))
        body = json.dumps(request).encode() if pii_types else b""  # b"": unchanged, forward the original
        num_prompt, num_completion = count_request_tokens(kind, request, self.state)
        try:
            admission = await gateway.admit(record, model, user, request_id, num_prompt, num_completion, pii_types)
        except LimitExceededError as exc:
            gateway.refuse(record, model, user, request_id, 429, "limited", exc.message, pii_types)
            return APIError(429, exc.message, headers=exc.headers)
        except QuotaExceededError as exc:
            gateway.refuse(record, model, user, request_id, 429, "limited", exc.message, pii_types)
            return _quota_error(exc)
        return admission, body

    async def _run(self, kind: str, admission: Admission, request: dict[str, Any], body: bytes, scope: Scope,
                   receive: Receive, send: Send) -> None:
        status: list[int] = []
        embedding_usage: list[int] = []
        transform: Transform | None = None
        is_stream = request.get("stream") is True
        if kind == "embedding":
            transform = _usage_reader(embedding_usage)
        elif self.gateway.config.pii.scan_completions and admission.record.spec.pii_mode != "off" and not is_stream:
            scanner = await self.gateway.pii_scanner()
            transform = lambda data: redact_completion_body(data, scanner, self._count_completion_pii)  # noqa: E731
        metrics = self.gateway.metrics
        if metrics is not None:
            metrics.admit_time.observe(time.perf_counter() - scope["yaie.gateway_started"])
        try:
            await _forward(self.app, scope, _replay(body, receive), send, admission.grant.headers, transform, status)
        finally:
            settle_started = time.perf_counter()
            ctx = scope.get("yaie.context")
            usage = _usage(ctx, status, embedding_usage)
            await asyncio.shield(self.gateway.finish(admission, usage, status[0] if status else STATUS_CLIENT_CLOSED))
            if metrics is not None:
                metrics.settle_time.observe(time.perf_counter() - settle_started)

    def _model_of(self, kind: str, request: dict[str, Any]) -> str:
        model = request.get("model")
        if isinstance(model, str) and model:
            return model
        if kind == "embedding":
            return self.state.embedding.model_name if self.state.embedding is not None else ""
        return self.state.engine.model_name if self.state.engine is not None else ""

    def _count(self, decision: str) -> None:
        if self.gateway.metrics is not None:
            self.gateway.metrics.count_decision(decision)

    def _count_pii(self, counts: dict[str, int], where: str, action: str) -> None:
        if self.gateway.metrics is not None and counts:
            self.gateway.metrics.count_pii(counts, where, action)

    def _count_completion_pii(self, counts: dict[str, int]) -> None:
        self._count_pii(counts, "completion", "redacted")


def _usage(ctx: Any, status: list[int], embedding_usage: list[int]) -> Usage:
    """What to bill: nothing for a refused request that generated nothing."""
    if embedding_usage:
        return Usage(embedding_usage[0])
    if ctx is None or ctx.completion_tokens is None:
        return Usage()
    failed = not status or status[0] >= 400
    if failed and not ctx.completion_tokens:
        return Usage()
    return Usage(ctx.prompt_tokens or 0, ctx.cached_tokens or 0, ctx.completion_tokens)


def _quota_error(exc: QuotaExceededError) -> APIError:
    error = APIError(429, exc.message, headers={"retry-after": str(max(1, int(exc.retry_after_s)))})
    error.param = None
    error.headers["x-yaie-error-type"] = "insufficient_quota"
    return error


async def _answer(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
    if error.status == 429:
        kind = error.headers.pop("x-yaie-error-type", "rate_limit_exceeded")
        body = {"error": {"message": error.message, "type": kind, "param": None, "code": kind}}
        response = JSONResponse(body, status_code=429, headers=error.headers)
    else:
        response = error_response(error)
    ctx = scope.get("yaie.context")
    if ctx is not None:
        ctx.error = error.message
    await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The (rewritten) body once, then the real channel (so disconnects are still seen)."""
    is_sent = False

    async def replay() -> Message:
        nonlocal is_sent
        if not is_sent:
            is_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _forward(app: ASGIApp, scope: Scope, receive: Receive, send: Send, extra_headers: dict[str, str] | None,
                   transform: Transform | None, status: list[int] | None = None) -> None:
    """Run the app; add `extra_headers`; with `transform`, buffer a JSON body and rewrite it."""
    scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]}
    held: list[Message] = []
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            if status is not None:
                status.append(message["status"])
            extra = [(k.encode(), v.encode()) for k, v in (extra_headers or {}).items()]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
            is_json = any(k == b"content-type" and v.startswith(b"application/json") for k, v in message["headers"])
            if transform is not None and is_json and message["status"] == 200:
                held.append(message)
                return
        elif message["type"] == "http.response.body" and held:
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            data = transform(b"".join(chunks)) if transform is not None else b"".join(chunks)
            start = held.pop()
            start["headers"] = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            start["headers"].append((b"content-length", str(len(data)).encode()))
            await send(start)
            message = {"type": "http.response.body", "body": data, "more_body": False}
        await send(message)

    await app(scope, receive, wrapped)


def _only_models(body: bytes, allowed: set[str]) -> bytes:
    listing = json.loads(body)
    listing["data"] = [m for m in listing.get("data", []) if m.get("id") in allowed]
    return json.dumps(listing).encode()


def _usage_reader(sink: list[int]) -> Transform:
    def read(body: bytes) -> bytes:
        usage = json.loads(body).get("usage") or {}
        sink.append(int(usage.get("prompt_tokens", 0)))
        return body

    return read

