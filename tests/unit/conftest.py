"""Small factories shared by the unit tests (pure Python, no weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import pytest

from yaie.types import Request, RequestTimes, SamplingParams


class RequestFactory(Protocol):
    def __call__(
        self,
        request_id: str,
        prompt: int | Sequence[int] = ...,
        *,
        max_tokens: int | None = ...,
        arrival: float | None = ...,
        priority: int = ...,
        group_id: str | None = ...,
        **params: object,
    ) -> Request: ...


class FakeClock:
    """An injectable clock; tests move it by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_request() -> RequestFactory:
    """make_request("a", 10) -> a request with prompt tokens 0..9; or pass the token ids themselves.

    Arrival times default to the creation order (0.0, 1.0, ...) so fcfs/priority tie-breaks are explicit.
    Extra keyword arguments go to SamplingParams (eos_token_ids defaults to {2}).
    """
    counter = iter(range(1_000_000))

    def factory(
        request_id: str,
        prompt: int | Sequence[int] = 8,
        *,
        max_tokens: int | None = 16,
        arrival: float | None = None,
        priority: int = 0,
        group_id: str | None = None,
        eos_token_ids: frozenset[int] = frozenset({2}),
        max_model_len: int = 2048,
        **params: object,
    ) -> Request:
        token_ids = list(range(prompt)) if isinstance(prompt, int) else list(prompt)
        index = next(counter)
        return Request(
            request_id=request_id,
            prompt_token_ids=token_ids,
            sampling_params=SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
            eos_token_ids=eos_token_ids,
            max_model_len=max_model_len,
            priority=priority,
            group_id=group_id,
            times=RequestTimes(arrival=float(index) if arrival is None else arrival),
        )

    return factory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

