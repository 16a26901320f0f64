"""SSE decoding and the interpretation of OpenAI stream chunks."""

from __future__ import annotations

import json

from yaie.bench.sse import SSEDecoder, parse_chunk


def _decode(lines: list[str]) -> list[str]:
    decoder = SSEDecoder()
    events = [data for line in lines if (data := decoder.feed_line(line)) is not None]
    tail = decoder.flush()
    return events + ([tail] if tail is not None else [])


def test_decoder_dispatches_on_blank_lines() -> None:
    assert _decode(["data: {\"a\": 1}", "", "data: [DONE]", ""]) == ['{"a": 1}', "[DONE]"]


def test_decoder_joins_multiline_data_and_ignores_comments_and_other_fields() -> None:
    lines = [": keep-alive", "event: message", "id: 7", "data: first", "data:second", "retry: 10", ""]
    assert _decode(lines) == ["first\nsecond"]


def test_decoder_handles_crlf_and_a_missing_final_blank_line() -> None:
    assert _decode(["data: x\r", "\r", "data: y"]) == ["x", "y"]
    assert _decode(["", "", ": ping", ""]) == []


def test_completion_chunk_with_text_carries_output() -> None:
    chunk = parse_chunk(json.dumps({"choices": [{"index": 0, "text": " hello", "finish_reason": None}]}),
                        "completions")
    assert chunk.carries_output
    assert chunk.text == " hello"
    assert chunk.error is None


def test_completion_chunk_with_empty_text_counts_unless_it_only_finishes() -> None:
    special = parse_chunk(json.dumps({"choices": [{"text": "", "finish_reason": None}]}), "completions")
    assert special.carries_output
    finish_only = parse_chunk(json.dumps({"choices": [{"text": "", "finish_reason": "length"}]}), "completions")
    assert not finish_only.carries_output
    assert finish_only.finish_reason == "length"
    last_token = parse_chunk(json.dumps({"choices": [{"text": "!", "finish_reason": "length"}]}), "completions")
    assert last_token.carries_output


def test_usage_chunk_reports_counts_and_no_output() -> None:
    chunk = parse_chunk(json.dumps({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5,
                                                             "total_tokens": 17}}), "completions")
    assert not chunk.carries_output
    assert (chunk.prompt_tokens, chunk.completion_tokens) == (12, 5)


def test_chat_role_chunk_is_not_output_but_content_is() -> None:
    role = parse_chunk(json.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}]}), "chat")
    assert not role.carries_output
    content = parse_chunk(json.dumps({"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}), "chat")
    assert content.carries_output
    assert content.text == "Hi"
    reasoning = parse_chunk(json.dumps({"choices": [{"delta": {"reasoning_content": "hmm"}}]}), "chat")
    assert reasoning.carries_output


def test_error_chunks_and_malformed_payloads_are_errors() -> None:
    error = parse_chunk(json.dumps({"error": {"message": "engine died", "type": "InternalServerError",
                                              "code": 500}}), "completions")
    assert error.error == "engine died"
    assert "malformed" in (parse_chunk("{not json", "chat").error or "")
    assert parse_chunk("[1, 2]", "chat").error is not None
