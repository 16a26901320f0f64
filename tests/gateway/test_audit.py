"""The audit chain (tampering detected, first broken entry named), retention and erasure, on SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select, update

from tests.gateway.test_budget_ledger import entry
from yaie.gateway.audit import AuditEntry
from yaie.gateway.ledger import write_entries
from yaie.gateway.models import AuditRow, LedgerRow, UsageDailyRow, utcnow
from yaie.gateway.storage import GatewayStorage


async def _fill(storage: GatewayStorage, n: int = 6, user: str | None = None) -> None:
    await storage.audit.append([AuditEntry("key:k", "request", "allowed", key_id="k", user=user,
                                           detail={"i": i}) for i in range(n)])


async def _sql(storage: GatewayStorage, statement: object) -> None:
    async with storage.db.session() as session, session.begin():
        await session.execute(statement)  # type: ignore[arg-type]


async def test_an_intact_chain_verifies(storage: GatewayStorage) -> None:
    await _fill(storage)
    await _fill(storage, 3)
    result = await storage.audit.verify()
    assert result.is_valid and result.num_checked == 9


async def test_an_edited_entry_is_named(storage: GatewayStorage) -> None:
    await _fill(storage)
    await _sql(storage, update(AuditRow).where(AuditRow.seq == 4).values(decision="blocked"))
    result = await storage.audit.verify()
    assert not result.is_valid and result.first_broken_seq == 4 and "modified" in result.reason
    assert result.num_checked == 3


async def test_a_deleted_entry_is_named(storage: GatewayStorage) -> None:
    await _fill(storage)
    await _sql(storage, delete(AuditRow).where(AuditRow.seq == 2))
    result = await storage.audit.verify()
    assert (result.is_valid, result.first_broken_seq) == (False, 2)


async def test_a_truncated_tail_is_detected(storage: GatewayStorage) -> None:
    await _fill(storage)
    await _sql(storage, delete(AuditRow).where(AuditRow.seq >= 5))
    result = await storage.audit.verify()
    assert (result.is_valid, result.first_broken_seq) == (False, 5) and "missing" in result.reason


async def test_a_swapped_user_is_detected(storage: GatewayStorage) -> None:
    await _fill(storage, user="alice")
    await _sql(storage, update(AuditRow).where(AuditRow.seq == 3).values(user="mallory"))
    assert (await storage.audit.verify()).first_broken_seq == 3


async def test_retention_purge_keeps_the_chain_verifiable(storage: GatewayStorage) -> None:
    old = utcnow() - dt.timedelta(days=40)
    await storage.audit.append([AuditEntry("admin", "key.create", "done", ts=old) for _ in range(4)])
    await _fill(storage, 3)
    await write_entries(storage.db, [entry(ts=old), entry(ts=old), entry()])
    counts = await storage.purge_older_than(30, "test")
    assert counts == {"ledger_rows": 2, "daily_rows": 1, "audit_entries": 4}
    result = await storage.audit.verify()
    assert result.is_valid and result.num_checked == 4  # 3 kept + the purge record
    [purge] = [e for e in await storage.audit.recent() if e["action"] == "retention.purge"]
    assert purge["detail"]["removed_through_seq"] == 4
    await _sql(storage, update(AuditRow).where(AuditRow.seq == 5).values(actor="x"))
    assert (await storage.audit.verify()).first_broken_seq == 5


async def test_erasure_removes_exactly_that_users_rows(storage: GatewayStorage) -> None:
    await write_entries(storage.db, [entry(user="alice"), entry(user="alice"), entry(user="bob"), entry(user=None)])
    await _fill(storage, 2, user="alice")
    await _fill(storage, 1, user="bob")
    counts = await storage.erase_user("alice", "test")
    assert counts == {"ledger_rows": 2, "daily_rows": 1, "audit_entries_anonymised": 2}
    async with storage.db.session() as session:
        users = sorted(str(u) for u in (await session.execute(select(LedgerRow.user))).scalars())
        daily_users = sorted((await session.execute(select(UsageDailyRow.user))).scalars())
        audit_alice = (await session.execute(select(func.count()).where(AuditRow.user == "alice"))).scalar()
    assert users == ["None", "bob"] and daily_users == ["", "bob"] and audit_alice == 0
    assert (await storage.audit.verify()).is_valid  # blanking the id does not break the chain
    [erase] = [e for e in await storage.audit.recent() if e["action"] == "erase"]
    assert "alice" not in str(erase) and erase["detail"]["ledger_rows"] == 2
