"""Every error case returns its status and OpenAI-style body, and the server keeps serving afterwards."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import MAX_MODEL_LEN, MAX_REQUEST_BYTES, ServerProcess

CHAT_PATH = "/v1/chat/completions"
USER = [{"role": "user", "content": "Hello"}]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture
def http(server: ServerProcess) -> httpx.Client:
    return server.http()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER, "temperature": -1}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"messages": USER, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": USER, "tools": [{"type": "function", "function": {"name": "bad name"}}]},
         "tools[0].function.name"),
        ({"messages": USER, "audio": {"voice": "x"}}, "audio"),
        ({"messages": USER, "nonsense_field": 1}, "nonsense_field"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
         "messages[0].content"),
        ({"messages": []}, "messages"),
    ],
)
def test_invalid_chat_request_is_400_naming_the_field(http: httpx.Client, body: dict[str, Any],
                                                      param: str) -> None:
    error = error_of(http.post(CHAT_PATH, json=body), 400)
    assert error["type"] == "BadRequestError" and error["param"] == param


def test_invalid_completion_fields(http: httpx.Client) -> None:
    assert error_of(http.post("/v1/completions", json={"prompt": "x", "suffix": "!"}), 400)["param"] == "suffix"
    assert error_of(http.post("/v1/completions", json={"prompt": "x", "best_of": 3}), 400)["param"] == "best_of"
    assert error_of(http.post("/v1/completions", json={"prompt": ""}), 400)["param"] == "prompt"


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(CHAT_PATH, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert "JSON" in error_of(response, 400)["message"]


def test_unknown_model_is_404(http: httpx.Client) -> None:
    error = error_of(http.post(CHAT_PATH, json={"model": "gpt-nonexistent", "messages": USER}), 404)
    assert error["type"] == "NotFoundError" and error["param"] == "model"


def test_prompt_longer_than_context_is_400_input_tokens(http: httpx.Client) -> None:
    prompt = "word " * (MAX_MODEL_LEN + 50)
    error = error_of(http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}), 400)
    assert error["param"] == "input_tokens"


def test_prompt_plus_max_tokens_over_context_is_400_max_tokens(http: httpx.Client) -> None:
    error = error_of(http.post(CHAT_PATH, json={"messages": USER, "max_tokens": MAX_MODEL_LEN}), 400)
    assert error["param"] == "max_tokens"


def test_body_over_limit_is_413(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"prompt": "x" * (MAX_REQUEST_BYTES + 1)})
    assert error_of(response, 413)["type"] == "RequestTooLargeError"


def test_missing_or_wrong_api_key_is_401(server: ServerProcess) -> None:
    assert error_of(httpx.get(server.base_url + "/v1/models"), 401)["type"] == "AuthenticationError"
    wrong = httpx.get(server.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    error_of(wrong, 401)
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_openai_client_raises_typed_errors(server: ServerProcess, model: str) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=model, messages=USER, temperature=-3)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.api_url, api_key="bad", max_retries=0).models.list()


def test_server_keeps_serving_after_errors(server: ServerProcess, client: openai.OpenAI, model: str) -> None:
    with server.http() as http:
        for _ in range(3):
            error_of(http.post(CHAT_PATH, json={"messages": USER, "temperature": "x"}), 400)
    response = client.chat.completions.create(model=model, messages=USER, max_tokens=2)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert server.metric("yaie:http_errors_total", 'status="400"') >= 3
