"""Server-sent events from OpenAI-compatible servers: line decoding and chunk interpretation. Pure: no I/O.

`SSEDecoder` turns lines (without their terminators) into event payloads per the SSE spec:
`data:` lines accumulate, a blank line dispatches, `:` comments and other fields are ignored.
`parse_chunk` reads one OpenAI stream chunk (`text_completion` or `chat.completion.chunk`) into what the
benchmark needs: the text, whether it carries output tokens, the usage, or an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["completions", "chat"]
DONE_SENTINEL = "[DONE]"


class SSEDecoder:
    """Incremental SSE decoder; feed it lines without their line terminator."""

    def __init__(self) -> None:
        self._data_lines: list[str] = []

    def feed_line(self, line: str) -> str | None:
        """Returns an event's data when `line` completes one (a blank line after data lines), else None."""
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data_lines.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """The pending event's data, if any (for a stream that ends without a final blank line)."""
        if not self._data_lines:
            return None
        data = "\n".join(self._data_lines)
        self._data_lines = []
        return data


@dataclass(frozen=True)
class StreamChunk:
    """One stream chunk. `carries_output` is True when the chunk stands for generated tokens: a completions
    chunk with choices (except an empty one that only reports finish_reason), or a chat chunk with content
    (the role-only first chunk does not count, so TTFT is time to the first real token)."""

    text: str = ""
    carries_output: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


def parse_chunk(data: str, endpoint: Endpoint) -> StreamChunk:
    """Interpret one event payload (not `[DONE]`). Malformed JSON is reported as an error chunk."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return StreamChunk(error=f"malformed stream chunk: {data[:200]!r}")
    if not isinstance(payload, dict):
        return StreamChunk(error=f"unexpected stream chunk: {data[:200]!r}")
    if payload.get("error") is not None:
        return StreamChunk(error=_error_message(payload["error"]))
    prompt_tokens, completion_tokens = _usage_counts(payload.get("usage"))
    choices = payload.get("choices") or []
    if not choices:
        return StreamChunk(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    choice: dict[str, Any] = choices[0]
    finish_reason = choice.get("finish_reason")
    if endpoint == "chat":
        delta = choice.get("delta") or {}
        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        carries_output = bool(text)
    else:
        text = choice.get("text") or ""
        carries_output = bool(text) or finish_reason is None
    return StreamChunk(text, carries_output, finish_reason, prompt_tokens, completion_tokens)


def _usage_counts(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
