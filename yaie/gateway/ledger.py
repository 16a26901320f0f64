"""The usage ledger: one row per request, written in batches off the request path.

`LedgerWriter.record` only appends to an in-memory list. A background task flushes every `flush_interval_s`
(<= 1 s): ledger rows, the daily roll-up upserts and the batch's audit entries go to the database in one
transaction per kind. A crash therefore loses at most the last interval; `close()` flushes what is left, so a
clean shutdown loses nothing. A failed flush keeps its rows and retries on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from yaie.gateway.audit import AuditEntry, AuditLog
from yaie.gateway.db import Database
from yaie.gateway.models import LedgerRow, UsageDailyRow

logger = logging.getLogger(__name__)
ROLLUP_KEY = ["day", "key_id", "model", "user"]
ROLLUP_SUMS = ["num_requests", "num_errors", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_micros",
               "latency_ms_sum"]
MAX_ROWS_PER_STATEMENT = 500


@dataclass(frozen=True)
class LedgerEntry:
    """One request's bill. `user` is the request's `user` field; no prompt or completion text."""

    request_id: str
    ts: dt.datetime
    key_id: str
    user: str | None
    model: str
    num_prompt_tokens: int
    num_cached_tokens: int
    num_completion_tokens: int
    cost_micros: int
    latency_ms: int
    status: int

    def row(self) -> dict[str, object]:
        return {"request_id": self.request_id, "ts": self.ts, "key_id": self.key_id, "user": self.user,
                "model": self.model, "prompt_tokens": self.num_prompt_tokens,
                "cached_tokens": self.num_cached_tokens, "completion_tokens": self.num_completion_tokens,
                "cost_micros": self.cost_micros, "latency_ms": self.latency_ms, "status": self.status}


def rollup_rows(entries: Iterable[LedgerEntry]) -> list[dict[str, object]]:
    """Sum entries per (day, key, model, user) — the increments to add to the daily table."""
    sums: dict[tuple[dt.date, str, str, str], list[int]] = {}
    for e in entries:
        key = (e.ts.date(), e.key_id, e.model, e.user or "")
        acc = sums.setdefault(key, [0] * len(ROLLUP_SUMS))
        values = (1, int(e.status >= 400), e.num_prompt_tokens, e.num_cached_tokens, e.num_completion_tokens,
                  e.cost_micros, e.latency_ms)
        for i, value in enumerate(values):
            acc[i] += value
    return [dict(zip(ROLLUP_KEY, key, strict=True)) | dict(zip(ROLLUP_SUMS, acc, strict=True))
            for key, acc in sums.items()]


async def write_entries(db: Database, entries: list[LedgerEntry]) -> None:
    """Insert ledger rows and add them to the daily roll-up, in one transaction."""
    if not entries:
        return
    async with db.session() as session, session.begin():
        for start in range(0, len(entries), MAX_ROWS_PER_STATEMENT):
            chunk = entries[start:start + MAX_ROWS_PER_STATEMENT]
            await session.execute(LedgerRow.__table__.insert(), [e.row() for e in chunk])
        rollups = sorted(rollup_rows(entries), key=lambda r: tuple(str(r[k]) for k in ROLLUP_KEY))
        for start in range(0, len(rollups), MAX_ROWS_PER_STATEMENT):
            chunk = rollups[start:start + MAX_ROWS_PER_STATEMENT]
            await session.execute(db.upsert(UsageDailyRow.__table__, chunk, ROLLUP_KEY, ROLLUP_SUMS))  # type: ignore[arg-type]


class LedgerWriter:
    """Buffers ledger entries and audit entries; flushes them together every interval and on close."""

    def __init__(self, db: Database, audit: AuditLog, flush_interval_s: float) -> None:
        self.db = db
        self.audit = audit
        self.flush_interval_s = flush_interval_s
        self._entries: list[LedgerEntry] = []
        self._audit_entries: list[AuditEntry] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.num_written = 0

    def record(self, entry: LedgerEntry | None, audit_entry: AuditEntry | None = None) -> None:
        if entry is not None:
            self._entries.append(entry)
        if audit_entry is not None:
            self._audit_entries.append(audit_entry)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except Exception:
                logger.exception("ledger flush failed; %d rows kept for the next try", len(self._entries))

    async def flush(self) -> None:
        async with self._lock:
            entries, self._entries = self._entries, []
            audit_entries, self._audit_entries = self._audit_entries, []
            try:
                await write_entries(self.db, entries)
            except BaseException:
                self._entries[:0] = entries
                self._audit_entries[:0] = audit_entries
                raise
            self.num_written += len(entries)
            try:
                await self.audit.append(audit_entries)
            except BaseException:
                self._audit_entries[:0] = audit_entries
                raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
