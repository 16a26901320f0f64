"""Context strategies on conversations longer than the session server's window (MAX_MODEL_LEN tokens)."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import MAX_MODEL_LEN, ServerProcess

MAX_TOKENS = 4
HEADER = "x-yaie-context-truncated"


def long_conversation(num_turns: int = 14) -> list[dict[str, str]]:
    story = "The quick brown fox jumps over the lazy dog near the quiet river bank every single morning. " * 6
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    for turn in range(num_turns):
        messages.append({"role": "user", "content": f"Turn {turn}: {story}"})
        messages.append({"role": "assistant", "content": f"Noted turn {turn}."})
    messages.append({"role": "user", "content": "Say OK."})
    return messages


def post(server: ServerProcess, model: str, **extra: Any) -> Any:
    with server.http() as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": long_conversation(),
                                                        "max_tokens": MAX_TOKENS, "temperature": 0, **extra})


def test_error_is_the_default(server: ServerProcess, model: str) -> None:
    response = post(server, model)
    assert response.status_code == 400 and "context window" in response.json()["error"]["message"]
    assert HEADER not in response.headers


def test_truncate_oldest_drops_whole_messages(server: ServerProcess, model: str) -> None:
    response = post(server, model, context_strategy="truncate_oldest")
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    report = usage["context_truncation"]
    assert report["strategy"] == "truncate_oldest" and report["truncated_messages"] == 0
    assert report["dropped_messages"] > 0
    assert report["dropped_tokens"] > 0
    assert usage["prompt_tokens"] + MAX_TOKENS <= MAX_MODEL_LEN
    assert f"dropped_messages={report['dropped_messages']}" in response.headers[HEADER]


def test_sliding_window_fills_the_window_with_recent_tokens(server: ServerProcess, model: str) -> None:
    response = post(server, model, context_strategy="sliding_window")
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    report = usage["context_truncation"]
    assert report["strategy"] == "sliding_window" and report["truncated_messages"] == 1
    budget = MAX_MODEL_LEN - MAX_TOKENS
    assert budget - 8 <= usage["prompt_tokens"] <= budget  # only a partial token or two is left unused
    assert "strategy=sliding_window" in response.headers[HEADER]


def test_streamed_response_reports_the_truncation(server: ServerProcess, model: str) -> None:
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": model, "messages": long_conversation(), "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True}, "context_strategy": "truncate_oldest"}) as response:
        assert response.status_code == 200 and "dropped_messages=" in response.headers[HEADER]
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert '"context_truncation"' in lines[-1]
