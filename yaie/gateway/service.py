"""The running gateway: storage, key cache, limits, budgets, ledger, PII scanner and their background loops.

Request path (see middleware.py): `authenticate` -> `admit` (concurrency, RPM, TPM reservation, budget hold)
-> the server runs the request -> `finish` (release unused tokens and the slot, settle the budget with the
actual cost, queue the ledger row and the audit entry). Refusals go through `refuse` so they are billed as
zero-cost rows and audited too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yaie.gateway.audit import AuditEntry
from yaie.gateway.budget import BudgetHold, BudgetKeeper
from yaie.gateway.config import GatewayConfig, ModelPrice
from yaie.gateway.keys import KeyCache, KeyRecord
from yaie.gateway.ledger import LedgerEntry, LedgerWriter
from yaie.gateway.models import utcnow
from yaie.gateway.rate_limit import LimitGrant, RateLimiter, make_storage
from yaie.gateway.storage import GatewayStorage, open_storage

if TYPE_CHECKING:
    from yaie.gateway.metrics import GatewayMetrics
    from yaie.gateway.pii import PIIScanner

logger = logging.getLogger(__name__)
RETENTION_INTERVAL_S = 6 * 3600


@dataclass(frozen=True)
class Usage:
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_completion_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_completion_tokens


@dataclass
class Admission:
    """One admitted request: what it holds and what to record when it ends."""

    record: KeyRecord
    model: str
    user: str | None
    request_id: str
    price: ModelPrice
    grant: LimitGrant
    hold: BudgetHold | None
    pii_types: tuple[str, ...] = ()
    started_s: float = field(default_factory=time.monotonic)


class Gateway:
    def __init__(self, config: GatewayConfig, storage: GatewayStorage) -> None:
        self.config = config
        self.storage = storage
        self.keys = KeyCache(storage.keys, config.key_refresh_interval_s)
        counters = make_storage(config.rate_limit_storage)
        self.limiter = RateLimiter(counters)
        self.budgets = BudgetKeeper(counters, storage.spend_since, config.alerts)
        self.ledger = LedgerWriter(storage.db, storage.audit, config.ledger_flush_interval_s)
        self.metrics: GatewayMetrics | None = None
        self._pii: asyncio.Future[PIIScanner] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, config: GatewayConfig) -> Gateway:
        return cls(config, await open_storage(config))

    async def start(self) -> None:
        """Load the keys, start the ledger flusher, the key refresher, retention, and the PII scanner build."""
        await self.keys.refresh()
        self.ledger.start()
        self._tasks.append(asyncio.ensure_future(self._refresh_keys()))
        if self.config.retention_days is not None:
            self._tasks.append(asyncio.ensure_future(self._retention()))
        self._pii = asyncio.ensure_future(asyncio.to_thread(self._build_pii))

    async def close(self) -> None:
        """Stop the loops and flush every ledger row and audit entry (a clean shutdown loses nothing)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.ledger.close()
        await self.storage.close()

    async def pii_scanner(self) -> PIIScanner:
        assert self._pii is not None, "start() first"
        return await asyncio.shield(self._pii)

    def _build_pii(self) -> PIIScanner:
        from yaie.gateway.pii import PIIScanner

        scanner = PIIScanner(self.config.pii)
        scanner.analyze("warm-up: mail someone@example.com")  # the first call compiles the patterns
        return scanner

    async def admit(self, record: KeyRecord, model: str, user: str | None, request_id: str,
                    num_prompt_tokens: int, num_max_completion_tokens: int,
                    pii_types: tuple[str, ...] = ()) -> Admission:
        """Take the request's limits and budget, or raise LimitExceededError / QuotaExceededError."""
        grant = await self.limiter.acquire(record, num_prompt_tokens + num_max_completion_tokens)
        price = self.config.pricing.price_of(model)
        try:
            hold = await self.budgets.reserve(record, price.cost_micros(num_prompt_tokens, 0,
                                                                        num_max_completion_tokens), utcnow())
        except BaseException:
            await self.limiter.release(grant, 0)
            raise
        return Admission(record, model, user, request_id, price, grant, hold, pii_types)

    async def finish(self, admission: Admission, usage: Usage, status: int) -> None:
        cost = admission.price.cost_micros(usage.num_prompt_tokens, usage.num_cached_tokens,
                                           usage.num_completion_tokens)
        if admission.hold is not None:
            cost = min(cost, admission.hold.num_reserved_micros)
            await self.budgets.settle(admission.hold, admission.record, cost, utcnow())
        await self.limiter.release(admission.grant, usage.num_tokens)
        latency_ms = int(1000 * (time.monotonic() - admission.started_s))
        self._record(admission.record, admission.model, admission.user, admission.request_id, usage, cost,
                     latency_ms, status, "allowed", admission.pii_types, {})

    def refuse(self, record: KeyRecord, model: str, user: str | None, request_id: str, status: int,
               decision: str, reason: str, pii_types: tuple[str, ...] = ()) -> None:
        """Bill (zero) and audit a request the gateway refused: decision is limited, blocked or denied."""
        self._record(record, model, user, request_id, Usage(), 0, 0, status, decision, pii_types,
                     {"reason": reason})

    def _record(self, record: KeyRecord, model: str, user: str | None, request_id: str, usage: Usage, cost: int,
                latency_ms: int, status: int, decision: str, pii_types: tuple[str, ...],
                detail: dict[str, Any]) -> None:
        now = utcnow()
        entry = LedgerEntry(request_id, now, record.id, user, model, usage.num_prompt_tokens,
                            usage.num_cached_tokens, usage.num_completion_tokens, cost, latency_ms, status)
        audit = AuditEntry(f"key:{record.id}", "request", decision, key_id=record.id, model=model, user=user,
                           pii_types=pii_types, detail={"request_id": request_id, "status": status, **detail},
                           ts=now)
        self.ledger.record(entry, audit)
        if self.metrics is not None:
            self.metrics.count_decision(decision)

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.config.key_refresh_interval_s)
            try:
                await self.keys.refresh()
            except Exception:
                logger.exception("refreshing the API key cache failed; keeping the cached keys")

    async def _retention(self) -> None:
        assert self.config.retention_days is not None
        while True:
            try:
                counts = await self.storage.purge_older_than(self.config.retention_days, "retention")
                logger.info("retention purge (%d days): %s", self.config.retention_days, counts)
            except Exception:
                logger.exception("retention purge failed")
            await asyncio.sleep(RETENTION_INTERVAL_S)

