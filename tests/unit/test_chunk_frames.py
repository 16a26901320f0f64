"""Streamed chunks spliced from a pre-rendered envelope are the chunks pydantic renders, byte for byte."""

from __future__ import annotations

from typing import Any

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


def _completion(index: int, text: str, finish_reason: str | None) -> CompletionResponse:
    return CompletionResponse(**ENVELOPE, choices=[
        CompletionChoice(index=index, text=text, logprobs=None, finish_reason=finish_reason)])


def _chat(index: int, text: str, finish_reason: str | None) -> ChatCompletionChunk:
    return ChatCompletionChunk(**ENVELOPE, choices=[
        ChatStreamChoice(index=index, delta=DeltaMessage(content=text), finish_reason=finish_reason)])


@pytest.mark.parametrize("exclude", [{"usage"}, None])
@pytest.mark.parametrize("finish_reason", [None, "stop", "length", "tool_calls"])
@pytest.mark.parametrize(("envelope", "render", "plain_json"), [
    (CompletionResponse, _completion, plain_choice_json), (ChatCompletionChunk, _chat, plain_delta_json)])
def test_spliced_chunks_match_pydantic(envelope: Any, render: Any, plain_json: Any, exclude: set[str] | None,
                                       finish_reason: str | None) -> None:
    frame = ChunkFrame(envelope(**ENVELOPE, choices=[]), exclude)
    for index, text in enumerate(TEXTS):
        expected = sse_event(render(index, text, finish_reason).model_dump_json(exclude=exclude))
        assert frame.event(plain_json(index, text, finish_reason)) == expected


def test_an_envelope_with_choices_is_refused() -> None:
    with pytest.raises(ValueError, match="empty choices"):
        ChunkFrame(_completion(0, "x", None), None)
