"""The HTTP layer before a model is attached: health while loading, auth, body limit, drain, errors, logs.

Everything here runs in-process through httpx's ASGI transport; the engine-backed paths are in tests/e2e.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from yaie.server.app import build_app, server_state
from yaie.server.settings import ServerConfig


def client_for(config: ServerConfig) -> httpx.AsyncClient:
    app = build_app(None, config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["type"] == error_type
    return error


async def test_health_and_api_answer_503_while_loading() -> None:
    async with client_for(ServerConfig()) as client:
        health = await client.get("/health")
        error = assert_error(health, 503, "ServiceUnavailableError")
        assert "loading" in str(error["message"]) and health.headers["retry-after"]
        assert_error(await client.get("/v1/models"), 503, "ServiceUnavailableError")
        assert_error(await client.post("/v1/chat/completions", json=CHAT), 503, "ServiceUnavailableError")


async def test_malformed_bodies_are_400_not_422() -> None:
    async with client_for(ServerConfig()) as client:
        bad_json = await client.post("/v1/chat/completions", content=b"{not json",
                                     headers={"content-type": "application/json"})
        assert "not valid JSON" in str(assert_error(bad_json, 400, "BadRequestError")["message"])
        wrong_type = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": "many"})
        assert assert_error(wrong_type, 400, "BadRequestError")["param"] == "max_tokens"
        unknown = await client.post("/v1/completions", json={"prompt": "x", "suffix": "y", "bogus": 1})
        assert "unknown or unsupported field" in str(assert_error(unknown, 400, "BadRequestError")["message"])


async def test_api_key_required_on_v1_only() -> None:
    async with client_for(ServerConfig(api_key="sesame")) as client:
        missing = await client.post("/v1/chat/completions", json=CHAT)
        assert_error(missing, 401, "AuthenticationError")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "AuthenticationError")
        right = await client.get("/v1/models", headers={"Authorization": "Bearer sesame"})
        assert right.status_code == 503  # past auth; the model is still loading
        assert (await client.get("/health")).status_code == 503  # health needs no key


async def test_body_over_limit_is_413_declared_or_streamed() -> None:
    async with client_for(ServerConfig(max_request_bytes=100)) as client:
        declared = await client.post("/v1/completions", json={"prompt": "x" * 200})
        assert_error(declared, 413, "RequestTooLargeError")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"prompt": "'
            yield b"y" * 200
            yield b'"}'

        streamed = await client.post("/v1/completions", content=chunks(),
                                     headers={"content-type": "application/json"})
        assert_error(streamed, 413, "RequestTooLargeError")


async def test_draining_server_refuses_with_retry_after() -> None:
    app = build_app(None, ServerConfig())
    server_state(app).begin_drain()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/completions", json={"prompt": "x"})
        assert_error(response, 503, "ServiceUnavailableError")
        assert int(response.headers["retry-after"]) >= 1
        assert (await client.get("/health")).status_code == 503


async def test_unknown_route_and_method_have_openai_bodies() -> None:
    async with client_for(ServerConfig()) as client:
        assert_error(await client.get("/v1/nothing"), 404, "NotFoundError")
        assert_error(await client.get("/v1/completions"), 405, "MethodNotAllowedError")


@pytest.mark.parametrize(("sent", "echoed"), [("req-42", "req-42"), ("has space", None), ("", None)])
async def test_request_id_echoed_or_generated(sent: str, echoed: str | None) -> None:
    async with client_for(ServerConfig()) as client:
        response = await client.get("/health", headers={"X-Request-Id": sent})
        returned = response.headers["x-request-id"]
        assert returned == echoed if echoed is not None else (returned and returned != sent)


async def test_metrics_count_http_errors_by_status() -> None:
    async with client_for(ServerConfig(api_key="k")) as client:
        for _ in range(3):
            await client.get("/v1/models")
        text = (await client.get("/metrics")).text
        assert 'yaie:http_errors_total{status="401"} 3.0' in text
        assert "# TYPE yaie:time_to_first_token_seconds histogram" in text


async def test_one_json_access_log_line_per_api_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="yaie.access")
    async with client_for(ServerConfig()) as client:
        await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc"})
        await client.get("/health")  # not an API request: no line
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "yaie.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "abc" and line["status"] == 503 and line["path"] == "/v1/chat/completions"
    assert "loading" in line["error"] and "prompt" not in line and line["latency_s"] >= 0
