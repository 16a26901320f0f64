"""Errors the engine raises to its callers; the HTTP layer maps each to an OpenAI-style status."""

from __future__ import annotations

from yaie.types import InvalidParameterError


class PromptTooLongError(InvalidParameterError):
    """The prompt (param "input_tokens") or prompt + max_tokens (param "max_tokens") exceeds the context window."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full (max_queued_requests / max_queued_tokens) or the engine is draining: retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDeadError(RuntimeError):
    """The engine loop stopped after an internal fault; no request can make progress."""
