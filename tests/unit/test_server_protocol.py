"""OpenAI request parsing/translation and response shapes (yaie/server/protocol.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tests.e2e.openai_schema import validate
from yaie.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TopLogprob,
    Usage,
)
from yaie.types import InvalidParameterError

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields})


def test_chat_request_maps_to_sampling_params() -> None:
    request = chat(temperature=0, top_p=0.5, top_k=7, min_p=0.1, n=2, stop="END", seed=3, max_tokens=9,
                   presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2, min_tokens=2,
                   ignore_eos=True, logit_bias={"42": -100}, logprobs=True, top_logprobs=3)
    request.check_supported()
    params = request.sampling_params(request.output_limit, request.num_logprobs)
    assert (params.temperature, params.top_p, params.top_k, params.min_p, params.n) == (0, 0.5, 7, 0.1, 2)
    assert params.stop == ("END",) and params.seed == 3 and params.max_tokens == 9
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -0.5, 1.2)
    assert params.min_tokens == 2 and params.ignore_eos and params.logit_bias == {42: -100}
    assert params.logprobs == 3


def test_chat_defaults_follow_openai() -> None:
    request = chat()
    params = request.sampling_params(request.output_limit, request.num_logprobs)
    assert params.temperature == 1.0 and params.top_p == 1.0 and params.n == 1
    assert params.max_tokens is None and params.logprobs is None and params.stop == ()


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=7).output_limit == 7
    assert chat(max_tokens=5).output_limit == 5


def test_logprobs_without_top_logprobs_means_zero_alternatives() -> None:
    assert chat(logprobs=True).num_logprobs == 0
    assert chat(logprobs=False).num_logprobs is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_unsupported_chat_fields_name_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        chat(**fields).check_supported()
    assert info.value.param == param


def test_harmless_chat_fields_are_accepted() -> None:
    chat(user="u", metadata={"k": "v"}, store=False, modalities=["text"], response_format={"type": "text"},
         tool_choice="none", service_tier="auto", parallel_tool_calls=True).check_supported()


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        chat(verbosity="low")
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_out_of_range_value_names_the_parameter() -> None:
    request = chat(temperature=-1)
    with pytest.raises(InvalidParameterError) as info:
        request.sampling_params(request.output_limit, request.num_logprobs)
    assert info.value.param == "temperature"


@pytest.mark.parametrize("bias", [{"abc": 1.0}, {"5": 101.0}])
def test_bad_logit_bias_is_rejected(bias: dict[str, float]) -> None:
    request = chat(logit_bias=bias)
    with pytest.raises(InvalidParameterError) as info:
        request.sampling_params(None, None)
    assert info.value.param == "logit_bias"


def test_message_content_parts_are_joined_and_images_refused() -> None:
    request = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "b"}]}])
    assert request.messages[0].text() == "a\nb"
    with pytest.raises(ValidationError, match="only 'text' content parts"):
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_empty_messages_rejected() -> None:
    with pytest.raises(ValidationError):
        chat(messages=[])


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_completion_prompt_forms(prompt: object, expected: list[object]) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).prompts() == expected


@pytest.mark.parametrize("prompt", ["", [], [[]], ["a", ""]])
def test_empty_completion_prompt_is_rejected(prompt: object) -> None:
    with pytest.raises(InvalidParameterError) as info:
        CompletionRequest.model_validate({"prompt": prompt}).prompts()
    assert info.value.param == "prompt"


def test_completion_defaults_to_16_tokens_like_openai() -> None:
    assert CompletionRequest.model_validate({"prompt": "x"}).max_tokens == 16


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"), ({"echo": True, "logprobs": 1}, "echo")],
)
def test_unsupported_completion_fields(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        CompletionRequest.model_validate({"prompt": "x", **fields}).check_supported()
    assert info.value.param == param


def test_best_of_equal_to_n_is_fine() -> None:
    CompletionRequest.model_validate({"prompt": "x", "n": 2, "best_of": 2}).check_supported()


# ---- responses against OpenAI's published schemas ------------------------------------------------------------

USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5,
              prompt_tokens_details=PromptTokensDetails(cached_tokens=1))
TOKEN = ChatTokenLogprob(token="hi", logprob=-0.1, bytes=[104, 105],
                         top_logprobs=[TopLogprob(token="hi", logprob=-0.1, bytes=[104, 105])])


def dumped(model: object, **kwargs: object) -> dict[str, object]:
    return json.loads(model.model_dump_json(**kwargs))  # type: ignore[attr-defined]


def test_chat_response_matches_openai_schema() -> None:
    response = ChatCompletionResponse(
        id="chatcmpl-1", created=1, model="m", system_fingerprint="fp",
        choices=[ChatChoice(index=0, message=ChatResponseMessage(content="hi"),
                            logprobs=ChatChoiceLogprobs(content=[TOKEN]), finish_reason="stop")],
        usage=USAGE)
    validate(dumped(response), "CreateChatCompletionResponse")


def test_chat_chunks_match_openai_schema_and_omit_unset_delta_fields() -> None:
    first = ChatCompletionChunk(id="c", created=1, model="m", system_fingerprint="fp",
                                choices=[ChatStreamChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])
    body = dumped(first, exclude={"usage"})
    assert body["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in body
    validate(body, "CreateChatCompletionStreamResponse")
    last = ChatCompletionChunk(id="c", created=1, model="m", system_fingerprint="fp",
                               choices=[ChatStreamChoice(index=0, delta=DeltaMessage(content="x"),
                                                         finish_reason="length")])
    assert dumped(last)["choices"][0]["delta"] == {"content": "x"}
    validate(dumped(last), "CreateChatCompletionStreamResponse")
    usage_chunk = ChatCompletionChunk(id="c", created=1, model="m", system_fingerprint="fp", choices=[],
                                      usage=USAGE)
    validate(dumped(usage_chunk), "CreateChatCompletionStreamResponse")


def test_completion_response_matches_openai_schema() -> None:
    logprobs = CompletionLogprobs(text_offset=[0], token_logprobs=[-0.5], tokens=["a"], top_logprobs=[{"a": -0.5}])
    response = CompletionResponse(id="cmpl-1", created=1, model="m", system_fingerprint="fp", usage=USAGE,
                                  choices=[CompletionChoice(index=0, text="a", logprobs=logprobs,
                                                            finish_reason="length")])
    validate(dumped(response), "CreateCompletionResponse")


def test_model_list_matches_openai_schema() -> None:
    validate(dumped(ModelList(data=[ModelCard(id="m", created=1, max_model_len=2048)])), "ListModelsResponse")


def test_schema_check_can_fail() -> None:
    import jsonschema

    body = dumped(ModelList(data=[ModelCard(id="m", created=1, max_model_len=2048)]))
    body["data"][0]["created"] = "yesterday"  # type: ignore[index]
    with pytest.raises(jsonschema.ValidationError):
        validate(body, "ListModelsResponse")
