"""Streamed chunks spliced from a pre-rendered envelope are the chunks pydantic renders, byte for byte."""

from __future__ import annotations

import pytest

from yaie.server.protocol import (
    ChatCompletionChunk,
    ChatStreamChoice,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
)
from yaie.server.serving_base import ChunkFrame, sse_event
from yaie.server.serving_chat import plain_delta_json
from yaie.server.serving_completion import plain_choice_json

TEXTS = ["", " Paris", 'quote " and \\ backslash', "line\nbreak\ttab\r", "\x00\x01\x1f control", "é 日本 🙂",
         "</script>", "\u2028\u2029"]
ENVELOPE = {"id": "cmpl-1", "created": 1733500000, "model": 'we"ird/model', "system_fingerprint": "fp_x"}


@pytest.mark.parametrize("exclude", [{"usage"}, None])
@pytest.mark.parametrize("finish_reason", [None, "stop", "length"])
def test_completion_chunks_match_pydantic(exclude: set[str] | None, finish_reason: str | None) -> None:
    frame = ChunkFrame(CompletionResponse(**ENVELOPE, choices=[]), exclude)
    for index, text in enumerate(TEXTS):
        expected = CompletionResponse(**ENVELOPE, choices=[
            CompletionChoice(index=index, text=text, logprobs=None, finish_reason=finish_reason)])
        assert frame.event(plain_choice_json(index, text, finish_reason)) == sse_event(
            expected.model_dump_json(exclude=exclude))


@pytest.mark.parametrize("exclude", [{"usage"}, None])
@pytest.mark.parametrize("finish_reason", [None, "stop", "tool_calls"])
def test_chat_chunks_match_pydantic(exclude: set[str] | None, finish_reason: str | None) -> None:
    frame = ChunkFrame(ChatCompletionChunk(**ENVELOPE, choices=[]), exclude)
    for index, text in enumerate(TEXTS):
        expected = ChatCompletionChunk(**ENVELOPE, choices=[
            ChatStreamChoice(index=index, delta=DeltaMessage(content=text), finish_reason=finish_reason)])
        assert frame.event(plain_delta_json(index, text, finish_reason)) == sse_event(
            expected.model_dump_json(exclude=exclude))


def test_an_envelope_with_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="empty choices"):
        ChunkFrame(CompletionResponse(**ENVELOPE, choices=[
            CompletionChoice(index=0, text="x", logprobs=None, finish_reason=None)]), None)
