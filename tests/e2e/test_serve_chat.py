"""/v1/chat/completions against a real server with the official openai client (and raw SSE where the wire matters)."""

from __future__ import annotations

import openai

from tests.e2e.conftest import ServerProcess, stream_raw
from tests.e2e.openai_schema import validate

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name three colors."}]}]


def test_chat_completion_shape_and_usage(server: ServerProcess, model: str) -> None:
    with server.http() as http:
        response = http.post("/v1/chat/completions", headers={"X-Request-Id": "chat-shape-1"},
                             json={"model": model, "messages": MESSAGES, "max_tokens": 6, "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "chat-shape-1"
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == model and body["system_fingerprint"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


def test_stream_equals_non_stream_at_temperature_zero(server: ServerProcess, client: openai.OpenAI,
                                                      model: str) -> None:
    request = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(**request)
    with server.http() as http:
        payloads = stream_raw(http, "/v1/chat/completions",
                              {**request, "stream_options": {"include_usage": True}})
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["id"] == chunks[0]["id"] and chunk["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content_chunks = [c for c in chunks if c["choices"]]
    assert content_chunks[-1]["choices"][0]["finish_reason"] == whole.choices[0].finish_reason
    assert all(c["choices"][0]["finish_reason"] is None for c in content_chunks[:-1])
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    assert streamed == whole.choices[0].message.content
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == whole.usage.completion_tokens
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_field(server: ServerProcess, model: str) -> None:
    with server.http() as http:
        payloads = stream_raw(http, "/v1/chat/completions",
                              {"model": model, "messages": MESSAGES, "max_tokens": 2})
    assert payloads[-1] == "[DONE]" and all("usage" not in p for p in payloads[:-1])


def test_openai_client_streaming(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_two_returns_two_indexed_choices(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, n=2,
                                              temperature=1.0, seed=11)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content is not None for c in response.choices)
    assert response.usage.completion_tokens <= 8


def test_stop_string_cuts_the_output(client: openai.OpenAI, model: str) -> None:
    request = {"model": model, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    full = client.chat.completions.create(**request).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    cut = client.chat.completions.create(**request, stop=[stop, "never-appears"]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, model: str) -> None:
    request = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0, "top_p": 0.95,
               "seed": 1234}
    first = client.chat.completions.create(**request).choices[0].message.content
    second = client.chat.completions.create(**request).choices[0].message.content
    assert first == second


def test_logprobs_shapes(client: openai.OpenAI, model: str) -> None:
    response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5, temperature=0,
                                              logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(entry.token for entry in content) == response.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely token


def test_cached_tokens_on_repeated_long_prefix(client: openai.OpenAI, model: str) -> None:
    long_system = "You answer questions about the history of tea. " * 12  # several KV blocks
    messages = [{"role": "system", "content": long_system}, {"role": "user", "content": "Who first drank it?"}]
    first = client.chat.completions.create(model=model, messages=messages, max_tokens=2, temperature=0)
    second = client.chat.completions.create(model=model, messages=messages, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 64
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    assert second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
