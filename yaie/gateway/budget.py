"""Per-key spend budgets per day or month, in integer micro-dollars, never overshot.

A counter per (key, period) in the rate-limit storage (memory or redis, so processes share it) holds settled
spend plus outstanding reservations. Admission adds the request's worst-case cost (prompt + max completion
tokens); if that takes the counter past the budget it is taken back and the request refused (429
insufficient_quota). Completion gives back `estimate - actual` (actual <= estimate: cached tokens never cost
more than fresh ones). Hence settled spend <= budget at all times. A counter is seeded once from the ledger's
roll-up (spend so far this period), so budgets survive restarts. Crossing an alert threshold (80%, 100% by
default) logs a warning and, when configured, POSTs a JSON alert to a webhook.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits.aio.storage import Storage

from yaie.gateway.config import AlertConfig
from yaie.gateway.keys import KeyRecord

logger = logging.getLogger(__name__)
SpendSince = Callable[[str, dt.date], Awaitable[int]]
WEBHOOK_TIMEOUT_S = 5.0


class QuotaExceededError(Exception):
    """429 insufficient_quota: the request's worst-case cost does not fit in what is left of the budget."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class BudgetHold:
    key_id: str
    counter_key: str
    expiry_s: int
    num_reserved_micros: int
    budget_micros: int


@dataclass(frozen=True)
class Period:
    start: dt.date
    end: dt.datetime  # exclusive, naive UTC
    label: str


def current_period(kind: str, now: dt.datetime) -> Period:
    today = now.date()
    if kind == "day":
        return Period(today, dt.datetime.combine(today + dt.timedelta(days=1), dt.time()), today.isoformat())
    start = today.replace(day=1)
    num_days = calendar.monthrange(today.year, today.month)[1]
    end = dt.datetime.combine(start + dt.timedelta(days=num_days), dt.time())
    return Period(start, end, start.strftime("%Y-%m"))


class BudgetKeeper:
    def __init__(self, storage: Storage, spend_since: SpendSince, alerts: AlertConfig) -> None:
        self.storage = storage
        self.spend_since = spend_since
        self.alerts = alerts
        self._seeded: dict[str, asyncio.Future[None]] = {}
        self._alerted: set[tuple[str, float]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, record: KeyRecord, num_micros: int, now: dt.datetime) -> BudgetHold | None:
        """Hold `num_micros` of the key's budget, or raise QuotaExceededError. None when the key has no budget."""
        budget = record.spec.budget_micros
        if budget is None:
            return None
        period = current_period(record.spec.budget_period, now)
        counter = f"yaie-budget/{record.id}/{period.label}"
        expiry = int((period.end - now).total_seconds()) + 86_400
        await self._seed(record.id, counter, period, expiry)
        total = await self.storage.incr(counter, expiry, amount=num_micros)
        if total > budget:
            await self.storage.incr(counter, expiry, amount=-num_micros)
            self._alert(record, period, 1.0, total - num_micros, budget)
            left = max(0, budget - (total - num_micros))
            raise QuotaExceededError(
                f"budget exceeded: this request may cost up to ${num_micros / 1e6:.6f} but the key has "
                f"${left / 1e6:.6f} of its ${budget / 1e6:.6f} {record.spec.budget_period}ly budget left "
                f"(resets {period.end.isoformat()}Z)", (period.end - now).total_seconds())
        return BudgetHold(record.id, counter, expiry, num_micros, budget)

    async def settle(self, hold: BudgetHold, record: KeyRecord, num_actual_micros: int, now: dt.datetime) -> None:
        """Turn the hold into the actual cost (never more than the hold)."""
        refund = hold.num_reserved_micros - min(num_actual_micros, hold.num_reserved_micros)
        total = await self.storage.incr(hold.counter_key, hold.expiry_s, amount=-refund) if refund else \
            await self.storage.get(hold.counter_key)
        period = current_period(record.spec.budget_period, now)
        for threshold in sorted(self.alerts.thresholds):
            if total >= threshold * hold.budget_micros:
                self._alert(record, period, threshold, total, hold.budget_micros)

    async def spent(self, record: KeyRecord, now: dt.datetime) -> int:
        """Settled spend plus outstanding holds this period."""
        period = current_period(record.spec.budget_period, now)
        return await self.storage.get(f"yaie-budget/{record.id}/{period.label}")

    async def _seed(self, key_id: str, counter: str, period: Period, expiry: int) -> None:
        """Once per counter: add the period's spend recorded in the ledger (a lost or new counter). Requests of
        this process wait for the seeding; the storage-side marker makes one process do it."""
        seeding = self._seeded.get(counter)
        if seeding is None:
            seeding = self._seeded[counter] = asyncio.ensure_future(self._seed_once(key_id, counter, period, expiry))
        try:
            await asyncio.shield(seeding)
        except Exception:
            self._seeded.pop(counter, None)
            raise

    async def _seed_once(self, key_id: str, counter: str, period: Period, expiry: int) -> None:
        marker = counter + "/seeded"
        if await self.storage.incr(marker, expiry, amount=1) == 1:
            try:
                spent = await self.spend_since(key_id, period.start)
            except BaseException:
                await self.storage.incr(marker, expiry, amount=-1)
                raise
            if spent:
                await self.storage.incr(counter, expiry, amount=spent)

    def _alert(self, record: KeyRecord, period: Period, threshold: float, spent: int, budget: int) -> None:
        marker = (f"{record.id}/{period.label}", threshold)
        if marker in self._alerted:
            return
        self._alerted.add(marker)
        logger.warning("budget alert: key %s (%s) reached %.0f%% of its %s budget: $%.6f of $%.6f",
                       record.id, record.spec.name, 100 * threshold, record.spec.budget_period, spent / 1e6,
                       budget / 1e6)
        if self.alerts.webhook_url:
            payload = {"event": "budget_alert", "key_id": record.id, "key_name": record.spec.name,
                       "threshold": threshold, "period": period.label, "spent_micros": spent,
                       "budget_micros": budget}
            task = asyncio.ensure_future(_post(self.alerts.webhook_url, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _post(url: str, payload: dict[str, object]) -> None:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
            (await client.post(url, json=payload)).raise_for_status()
    except httpx.HTTPError as exc:
        logger.warning("budget alert webhook %s failed: %s", url, exc)
