"""Everything durable the gateway owns, opened together: database, audit log, keys, reports, and the
whole-database operations (retention purge, end-user erasure) that span several tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from yaie.gateway.audit import AuditEntry, AuditLog, user_digest
from yaie.gateway.config import GatewayConfig
from yaie.gateway.db import Database
from yaie.gateway.keys import KeyStore
from yaie.gateway.models import LedgerRow, UsageDailyRow, utcnow
from yaie.gateway.reports import ReportBuilder


@dataclass
class GatewayStorage:
    config: GatewayConfig
    db: Database
    audit: AuditLog
    keys: KeyStore
    reports: ReportBuilder

    async def close(self) -> None:
        await self.db.close()

    async def spend_since(self, key_id: str, day: dt.date) -> int:
        """Micro-dollars a key spent from `day` (inclusive) on, from the daily roll-up."""
        query = select(func.sum(UsageDailyRow.cost_micros)).where(UsageDailyRow.key_id == key_id,
                                                                  UsageDailyRow.day >= day)
        async with self.db.session() as session:
            return int((await session.execute(query)).scalar() or 0)

    async def erase_user(self, user: str, actor: str) -> dict[str, int]:
        """Delete the end-user's ledger and roll-up rows, blank their id in the audit log; returns counts."""
        if not user:
            raise ValueError("user must be a non-empty end-user id")
        async with self.db.session() as session, session.begin():
            ledger = await session.execute(delete(LedgerRow).where(LedgerRow.user == user))
            daily = await session.execute(delete(UsageDailyRow).where(UsageDailyRow.user == user))
        num_audit = await self.audit.erase_user(user)
        counts = {"ledger_rows": int(ledger.rowcount or 0),  # type: ignore[attr-defined]
                  "daily_rows": int(daily.rowcount or 0),  # type: ignore[attr-defined]
                  "audit_entries_anonymised": num_audit}
        await self.audit.append([AuditEntry(actor, "erase", "done", detail={
            "user_digest": user_digest(user), **counts})])
        return counts

    async def purge_older_than(self, days: int, actor: str) -> dict[str, int]:
        """Retention: drop ledger rows, roll-ups and audit entries older than `days` days."""
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        cutoff = utcnow() - dt.timedelta(days=days)
        async with self.db.session() as session, session.begin():
            ledger = await session.execute(delete(LedgerRow).where(LedgerRow.ts < cutoff))
            daily = await session.execute(delete(UsageDailyRow).where(UsageDailyRow.day < cutoff.date()))
        num_audit = await self.audit.purge_before(cutoff, actor)
        return {"ledger_rows": int(ledger.rowcount or 0),  # type: ignore[attr-defined]
                "daily_rows": int(daily.rowcount or 0),  # type: ignore[attr-defined]
                "audit_entries": num_audit}


async def open_storage(config: GatewayConfig) -> GatewayStorage:
    """Connect, migrate to the newest schema, and wire the stores together."""
    db = Database(config.url)
    try:
        await db.migrate()
    except Exception:
        await db.close()
        raise
    audit = AuditLog(db)
    return GatewayStorage(config, db, audit, KeyStore(db, audit), ReportBuilder(db, config.pricing))
