"""Append-only, hash-chained audit log in the database.

Each entry's `hash` is SHA-256 over the previous entry's hash and the entry's canonical JSON content (seq, time,
actor, action, decision, key id, model, user digest, PII types, detail), so editing, inserting or deleting an
entry breaks the chain at that entry; the head row (last seq and hash) catches a truncated tail. Appends are
serialised by updating the head row first in their transaction (a row lock on PostgreSQL, the write lock on
SQLite), so several server processes extend one chain.

Retention removes a prefix of the chain and moves the *anchor* (seq and hash of the last removed entry) into
the head row: verification starts there, and the purge itself is recorded as an entry. The end-user id is kept
in plaintext outside the hash (only its digest is hashed), so `erase_user` can blank it without breaking the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from yaie.gateway.db import Database
from yaie.gateway.models import AuditHeadRow, AuditRow, utcnow

GENESIS_HASH = "0" * 64
VERIFY_PAGE_ROWS = 5000


def user_digest(user: str | None) -> str | None:
    return None if user is None else hashlib.sha256(f"yaie-user:{user}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """What happened: `actor` (admin, cli, key:<id>), `action` (request, key.create, ...), `decision`
    (allowed, blocked, limited, denied, done)."""

    actor: str
    action: str
    decision: str
    key_id: str | None = None
    model: str | None = None
    user: str | None = None
    pii_types: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    ts: dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class VerifyResult:
    is_valid: bool
    num_checked: int
    first_broken_seq: int | None = None
    reason: str | None = None


def entry_hash(prev_hash: str, row: AuditRow) -> str:
    content = {
        "seq": row.seq, "ts": row.ts.isoformat(timespec="microseconds"), "actor": row.actor, "action": row.action,
        "decision": row.decision, "key_id": row.key_id, "model": row.model, "user_digest": row.user_digest,
        "pii_types": row.pii_types, "detail": row.detail,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, entries: Sequence[AuditEntry]) -> int:
        """Append `entries` in one transaction; returns the seq of the last one."""
        if not entries:
            return 0
        async with self.db.session() as session, session.begin():
            head = await _lock_head(session, len(entries))
            seq, prev_hash = head.last_seq - len(entries), head.last_hash
            for entry in entries:
                seq += 1
                row = _row(seq, entry)
                row.prev_hash = prev_hash
                row.hash = prev_hash = entry_hash(prev_hash, row)
                session.add(row)
            head.last_hash = prev_hash
            return seq

    async def verify(self) -> VerifyResult:
        """Walk the chain from the anchor; name the first entry whose link or content does not check out."""
        async with self.db.session() as session:
            head = (await session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1))).scalar_one()
            expected_seq, prev_hash, num_checked = head.anchor_seq + 1, head.anchor_hash, 0
            while True:
                rows = (await session.execute(
                    select(AuditRow).where(AuditRow.seq >= expected_seq).order_by(AuditRow.seq)
                    .limit(VERIFY_PAGE_ROWS))).scalars().all()
                for row in rows:
                    broken = _check(row, expected_seq, prev_hash)
                    if broken is not None:
                        return VerifyResult(False, num_checked, expected_seq, broken)
                    expected_seq, prev_hash, num_checked = row.seq + 1, row.hash, num_checked + 1
                if len(rows) < VERIFY_PAGE_ROWS:
                    break
            if head.last_seq != expected_seq - 1 or head.last_hash != prev_hash:
                return VerifyResult(False, num_checked, expected_seq,
                                    f"entries {expected_seq}..{head.last_seq} are missing (log truncated)")
            return VerifyResult(True, num_checked)

    async def purge_before(self, cutoff: dt.datetime, actor: str) -> int:
        """Remove the chain's prefix older than `cutoff`, move the anchor, and record the purge."""
        async with self.db.session() as session, session.begin():
            head = await _lock_head(session, 0)
            first_kept = (await session.execute(
                select(func.min(AuditRow.seq)).where(AuditRow.ts >= cutoff))).scalar_one_or_none()
            cut_seq = head.last_seq if first_kept is None else first_kept - 1
            if cut_seq <= head.anchor_seq:
                return 0
            cut_hash = (await session.execute(select(AuditRow.hash).where(AuditRow.seq == cut_seq))).scalar_one()
            result = await session.execute(delete(AuditRow).where(AuditRow.seq <= cut_seq))
            head.anchor_seq, head.anchor_hash = cut_seq, cut_hash
            num_removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
        await self.append([AuditEntry(actor, "retention.purge", "done",
                                      detail={"removed_through_seq": cut_seq, "num_removed": num_removed,
                                              "cutoff": cutoff.isoformat()})])
        return num_removed

    async def erase_user(self, user: str) -> int:
        """Blank the plaintext end-user id (its digest stays in the chain); returns the entries touched."""
        async with self.db.session() as session, session.begin():
            result = await session.execute(update(AuditRow).where(AuditRow.user == user).values(user=None))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def recent(self, limit: int = 100, before_seq: int | None = None) -> list[dict[str, Any]]:
        async with self.db.session() as session:
            query = select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit)
            if before_seq is not None:
                query = query.where(AuditRow.seq < before_seq)
            rows = (await session.execute(query)).scalars().all()
        return [_public(row) for row in rows]


async def _lock_head(session: AsyncSession, num_new: int) -> AuditHeadRow:
    """Take the append lock (the first statement writes the head row) and return the head."""
    await session.execute(update(AuditHeadRow).where(AuditHeadRow.id == 1)
                          .values(last_seq=AuditHeadRow.last_seq + num_new))
    return (await session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1))).scalar_one()


def _row(seq: int, entry: AuditEntry) -> AuditRow:
    return AuditRow(seq=seq, ts=entry.ts, actor=entry.actor, action=entry.action, decision=entry.decision,
                    key_id=entry.key_id, model=entry.model, user=entry.user, user_digest=user_digest(entry.user),
                    pii_types=",".join(sorted(entry.pii_types)),
                    detail=json.dumps(entry.detail, sort_keys=True, separators=(",", ":")))


def _check(row: AuditRow, expected_seq: int, prev_hash: str) -> str | None:
    if row.seq != expected_seq:
        return f"entry {expected_seq} is missing (next present entry is {row.seq})"
    if row.prev_hash != prev_hash:
        return f"entry {row.seq} does not link to the previous entry's hash"
    if entry_hash(prev_hash, row) != row.hash:
        return f"entry {row.seq} was modified (its content does not match its hash)"
    if row.user is not None and user_digest(row.user) != row.user_digest:
        return f"entry {row.seq} was modified (its user does not match the hashed user digest)"
    return None


def _public(row: AuditRow) -> dict[str, Any]:
    return {"seq": row.seq, "ts": row.ts.isoformat(), "actor": row.actor, "action": row.action,
            "decision": row.decision, "key_id": row.key_id, "model": row.model, "user": row.user,
            "pii_types": [t for t in row.pii_types.split(",") if t], "detail": json.loads(row.detail),
            "hash": row.hash}
