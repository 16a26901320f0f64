"""PII modes applied to OpenAI request bodies (chat messages, completion prompts, embedding inputs) and,
optionally, to non-streamed completion bodies."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from yaie.gateway.pii import PIIScanner

INLINE_SCAN_CHARS = 2000  # longer texts are scanned on a worker thread, off the event loop


class PIIBlockedError(ValueError):
    def __init__(self, entity_counts: dict[str, int]) -> None:
        types = ", ".join(sorted(entity_counts))
        super().__init__(f"the request was blocked: it contains personal data ({types})")
        self.entity_counts = entity_counts


class PIIUnscannableError(ValueError):
    """The request cannot be checked (over the length cap, or token ids instead of text)."""


def text_slots(kind: str, request: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) for every text the model will see; raises PIIUnscannableError for token ids."""
    slots: list[tuple[Any, Any]] = []
    if kind == "chat":
        for message in request.get("messages") or []:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                slots.append((message, "content"))
            elif isinstance(content, list):
                slots += [(part, "text") for part in content if isinstance(part, dict)
                          and isinstance(part.get("text"), str)]
        return slots
    field = "prompt" if kind == "completion" else "input"
    value = request.get(field)
    if isinstance(value, str):
        return [(request, field)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [(value, i) for i in range(len(value))]
    if value is not None:
        raise PIIUnscannableError(f"{field} given as token ids cannot be checked for personal data; send text")
    return slots


async def apply_pii(kind: str, request: dict[str, Any], mode: str, scanner: PIIScanner) -> dict[str, int]:
    """Redact in place (mode redact) or raise PIIBlockedError (mode block); returns entity counts found."""
    slots = text_slots(kind, request)
    num_chars = sum(len(container[key]) for container, key in slots)
    if num_chars > scanner.max_chars:
        raise PIIUnscannableError(f"the prompt has {num_chars} characters, over the {scanner.max_chars}-character "
                                  "limit for personal-data scanning")
    counts: Counter[str] = Counter()
    for container, key in slots:
        text = container[key]
        redaction = (await asyncio.to_thread(scanner.redact, text) if len(text) > INLINE_SCAN_CHARS
                     else scanner.redact(text))
        counts.update(redaction.entity_counts)
        container[key] = redaction.text
    if mode == "block" and counts:
        raise PIIBlockedError(dict(counts))
    return dict(counts)


def redact_completion_body(body: bytes, scanner: PIIScanner, on_found: Callable[[dict[str, int]], None]) -> bytes:
    """Redact a non-streamed chat/completion response's texts."""
    response = json.loads(body)
    counts: Counter[str] = Counter()
    for choice in response.get("choices") or []:
        message = choice.get("message")
        container, key = (message, "content") if isinstance(message, dict) else (choice, "text")
        if isinstance(container.get(key), str):
            redaction = scanner.redact(container[key])
            counts.update(redaction.entity_counts)
            container[key] = redaction.text
    if counts:
        on_found(dict(counts))
    return json.dumps(response).encode()
