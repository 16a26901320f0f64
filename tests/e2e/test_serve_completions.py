"""/v1/completions and /v1/models against a real server."""

from __future__ import annotations

import openai

from tests.e2e.conftest import ServerProcess, stream_raw
from tests.e2e.openai_schema import validate, validate_completion_chunk

PROMPT = "The three primary colors are"


def test_completion_shape(server: ServerProcess, model: str) -> None:
    with server.http() as http:
        response = http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 5,
                                                      "temperature": 0})
    body = response.json()
    validate(body, "CreateCompletionResponse")
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] <= 5


def test_stream_equals_non_stream_at_temperature_zero(server: ServerProcess, client: openai.OpenAI,
                                                      model: str) -> None:
    request = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**request)
    with server.http() as http:
        payloads = stream_raw(http, "/v1/completions", {**request, "stream_options": {"include_usage": True}})
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    for chunk in chunks:
        validate_completion_chunk(chunk)
    text_chunks = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == whole.choices[0].text
    assert text_chunks[-1]["choices"][0]["finish_reason"] == whole.choices[0].finish_reason
    assert chunks[-1]["usage"]["completion_tokens"] == whole.usage.completion_tokens


def test_batch_of_prompts_with_n(client: openai.OpenAI, model: str) -> None:
    response = client.completions.create(model=model, prompt=["One, two,", "Red, green,"], n=2, max_tokens=3,
                                         temperature=0)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text == response.choices[1].text  # greedy: both samples agree
    assert 4 <= response.usage.completion_tokens <= 12


def test_echo_prepends_the_prompt(client: openai.OpenAI, model: str) -> None:
    request = {"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    plain = client.completions.create(**request).choices[0].text
    echoed = client.completions.create(**request, echo=True).choices[0].text
    assert echoed == PROMPT + plain


def test_logprobs_shapes(client: openai.OpenAI, model: str) -> None:
    choice = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0,
                                       logprobs=2).choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    assert all(len(top) == 2 and token in top for token, top in zip(logprobs.tokens, logprobs.top_logprobs,
                                                                     strict=True))
    zero = client.completions.create(model=model, prompt=PROMPT, max_tokens=1, logprobs=0).choices[0].logprobs
    assert len(zero.token_logprobs) == 1 and zero.top_logprobs == [None]


def test_token_ids_as_prompt(server: ServerProcess, client: openai.OpenAI, model: str) -> None:
    ids = [504, 1530, 3070]  # any in-vocabulary ids
    response = client.completions.create(model=model, prompt=ids, max_tokens=2, temperature=0)
    assert response.usage.prompt_tokens == 3 and response.choices[0].finish_reason in ("stop", "length")


def test_models_list(client: openai.OpenAI, model: str) -> None:
    models = client.models.list().data
    assert models[0].id == model  # the chat model first (an embedding model may follow)
    assert all(m.object == "model" and m.owned_by and m.created > 0 for m in models)
