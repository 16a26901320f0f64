"""Per-key rate limits on the `limits` library: requests/minute, tokens/minute, requests in flight.

Storage is `memory` (one process) or `redis://...` (several server processes share each key's limits). RPM and
TPM use limits' sliding-window counter, whose `hit` is atomic and adds nothing when it refuses, so concurrent
requests can never be admitted past a limit. A request reserves `prompt + max completion` tokens at admission;
`release` gives back what it did not use, but only while the window it was charged to is still the current one
(a refund to a later window would let that window overshoot). Concurrency is an atomic counter in the same
storage (increment; over the limit -> decrement and refuse), released when the response completes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from yaie.gateway.keys import KeyRecord

WINDOW_S = 60
CONCURRENCY_TTL_S = 3600  # a crashed process's in-flight count is forgotten after this
REFUND_MARGIN_S = 0.5


class LimitExceededError(Exception):
    """429: `kind` is requests, tokens or concurrency; `headers` carry Retry-After and x-ratelimit-*."""

    def __init__(self, kind: str, message: str, retry_after_s: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = {**headers, "retry-after": str(max(1, math.ceil(retry_after_s)))}


@dataclass
class LimitGrant:
    """What one admitted request holds: tokens charged to a TPM window, a concurrency slot, rate headers."""

    key_id: str
    num_reserved_tokens: int = 0
    tokens_window_end: float | None = None  # epoch seconds; refunds only before this
    tokens_limit: int | None = None
    holds_slot: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def make_storage(uri: str) -> Storage:
    if uri == "memory":
        return MemoryStorage()
    return storage_from_string("async+" + uri, implementation="redispy")  # type: ignore[return-value]


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


@dataclass(frozen=True)
class _Window:
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    window_end: float


class RateLimiter:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(storage)  # type: ignore[arg-type]
        self._items: dict[tuple[str, int], Any] = {}

    async def acquire(self, record: KeyRecord, num_tokens: int) -> LimitGrant:
        """Admit one request that may use up to `num_tokens` tokens, or raise LimitExceededError."""
        spec = record.spec
        grant = LimitGrant(record.id)
        if spec.max_concurrency is not None:
            await self._take_slot(record.id, spec.max_concurrency)
            grant.holds_slot = True
        try:
            if spec.rpm is not None:
                await self._hit(grant, "requests", spec.rpm, 1)
            if spec.tpm is not None:
                if num_tokens > spec.tpm:
                    raise LimitExceededError("tokens", f"request too large: it may use {num_tokens} tokens "
                                             f"(prompt + max_tokens) but the key's limit is {spec.tpm} tokens per "
                                             "minute; lower max_tokens", WINDOW_S, {})
                window = await self._hit(grant, "tokens", spec.tpm, num_tokens)
                grant.num_reserved_tokens, grant.tokens_window_end = num_tokens, window.window_end
                grant.tokens_limit = spec.tpm
        except BaseException:
            await self.release(grant, grant.num_reserved_tokens)
            raise
        return grant

    async def release(self, grant: LimitGrant, num_used_tokens: int) -> None:
        """Return the concurrency slot and the reserved tokens that were not used (same window only)."""
        if grant.holds_slot:
            grant.holds_slot = False
            await self.storage.incr(self._slot_key(grant.key_id), CONCURRENCY_TTL_S, amount=-1)
        unused = grant.num_reserved_tokens - num_used_tokens
        grant.num_reserved_tokens = 0
        end = grant.tokens_window_end
        if unused > 0 and end is not None and grant.tokens_limit and time.time() < end - REFUND_MARGIN_S:
            item = self._item("tokens", grant.tokens_limit)
            await self._limiter.hit(item, "tokens", grant.key_id, cost=-unused)

    async def in_flight(self, key_id: str) -> int:
        return await self.storage.get(self._slot_key(key_id))

    async def _take_slot(self, key_id: str, max_concurrency: int) -> None:
        key = self._slot_key(key_id)
        if await self.storage.incr(key, CONCURRENCY_TTL_S, amount=1) > max_concurrency:
            await self.storage.incr(key, CONCURRENCY_TTL_S, amount=-1)
            raise LimitExceededError("concurrency", f"too many concurrent requests: this key allows "
                                     f"{max_concurrency} at once", 1.0, {})

    async def _hit(self, grant: LimitGrant, kind: str, limit: int, cost: int) -> _Window:
        item = self._item(kind, limit)
        is_admitted = await self._limiter.hit(item, kind, grant.key_id, cost=cost)
        window = await self._window(item, kind, grant.key_id, cost)
        grant.headers.update({f"x-ratelimit-limit-{kind}": str(limit),
                              f"x-ratelimit-remaining-{kind}": str(window.remaining),
                              f"x-ratelimit-reset-{kind}": format_duration(window.reset_s)})
        if not is_admitted:
            noun = "requests" if kind == "requests" else "tokens"
            raise LimitExceededError(kind, f"rate limit exceeded: {limit} {noun} per minute for this key "
                                     f"(this request needs {cost}); retry after {window.retry_after_s:.1f}s",
                                     window.retry_after_s, dict(grant.headers))
        return window

    async def _window(self, item: Any, kind: str, key_id: str, cost: int) -> _Window:
        prev_count, prev_ttl, cur_count, cur_ttl = await self.storage.get_sliding_window(  # type: ignore[attr-defined]
            item.key_for(kind, key_id), WINDOW_S)
        weighted = prev_count * prev_ttl / WINDOW_S + cur_count
        remaining = max(0, item.amount - math.floor(weighted))
        excess = math.floor(weighted) + cost - item.amount
        if excess <= 0:
            retry = 0.0
        elif prev_count > 0 and excess <= prev_count * prev_ttl / WINDOW_S:
            retry = excess * WINDOW_S / prev_count
        else:
            retry = min(float(WINDOW_S), max(cur_ttl - WINDOW_S, 0.0) + WINDOW_S * min(1.0, excess / max(cur_count, 1)))
        reset = cur_ttl if cur_count > 0 else prev_ttl
        return _Window(item.amount, remaining, reset, retry, time.time() + cur_ttl - WINDOW_S)

    def _item(self, kind: str, limit: int) -> Any:
        item = self._items.get((kind, limit))
        if item is None:
            item = self._items[(kind, limit)] = RateLimitItemPerMinute(limit, namespace=f"yaie-{kind}")
        return item

    @staticmethod
    def _slot_key(key_id: str) -> str:
        return f"yaie-concurrency/{key_id}"
