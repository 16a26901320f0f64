"""Worst-case token counts of a request at admission, with the served model's own tokenizer and chat template
(the same `render_prompt` the serving layer uses), so the TPM reservation and the budget hold are upper bounds
of what the request can use: prompt tokens + n x max completion tokens (the context's remainder when absent)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from yaie.server.protocol import ChatCompletionRequest, CompletionRequest
from yaie.server.state import ServerState
from yaie.types import InvalidParameterError


def count_request_tokens(kind: str, request: dict[str, Any], state: ServerState) -> tuple[int, int]:
    """(prompt tokens, max completion tokens) of a chat, completion or embedding request.

    A request the server will reject as invalid counts (0, 0): it runs nothing.
    """
    try:
        if kind == "chat":
            return _chat(request, state)
        if kind == "completion":
            return _completion(request, state)
        return _embedding(request), 0
    except (ValidationError, InvalidParameterError, ValueError, TypeError):
        return 0, 0


def _chat(request: dict[str, Any], state: ServerState) -> tuple[int, int]:
    assert state.servings is not None and state.engine is not None
    parsed = ChatCompletionRequest.model_validate(request)
    num_prompt = len(state.servings.chat.render_prompt(parsed.messages))
    return num_prompt, parsed.n * _max_new(parsed.output_limit, num_prompt, state.engine.max_model_len)


def _completion(request: dict[str, Any], state: ServerState) -> tuple[int, int]:
    assert state.servings is not None and state.engine is not None
    parsed = CompletionRequest.model_validate(request)
    tokenizer = state.servings.completion.tokenizer
    num_prompt = num_completion = 0
    for prompt in parsed.prompts():
        length = len(tokenizer.encode(prompt, add_special_tokens=True)) if isinstance(prompt, str) else len(prompt)
        num_prompt += length
        num_completion += parsed.n * _max_new(parsed.max_tokens, length, state.engine.max_model_len)
    return num_prompt, num_completion


def _max_new(limit: int | None, num_prompt: int, max_model_len: int) -> int:
    """Most tokens one sample can generate. A prompt longer than the context may be truncated by the server
    (context strategies), which frees room: then only the context length bounds the completion."""
    room = max_model_len - num_prompt if num_prompt <= max_model_len else max_model_len
    return room if limit is None else max(0, min(limit, room))


def _embedding(request: dict[str, Any]) -> int:
    """Upper bound without the embedding tokenizer: every token covers at least one character, plus the two
    special tokens per input; token-id inputs count exactly."""
    inputs = request.get("input")
    if isinstance(inputs, str):
        return len(inputs) + 2
    if isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs):
        return len(inputs)
    total = 0
    for item in inputs or []:
        total += len(item) + (2 if isinstance(item, str) else 0)
    return total
