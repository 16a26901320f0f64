"""The gateway's tables (SQLAlchemy 2 declarative). Times are naive UTC datetimes; money is integer micro-dollars.

The Alembic migrations in `yaie/gateway/migrations` create exactly this schema (a test compares them).
No table stores prompt or completion text.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Date, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of its secret is kept."""

    __tablename__ = "gateway_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    secret_prefix: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    budget_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    budget_period: Mapped[str] = mapped_column(String(8), default="month")
    pii_mode: Mapped[str] = mapped_column(String(8), default="off")
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class LedgerRow(Base):
    """One finished (or refused) request: who, which model, how many tokens, what it cost. No text."""

    __tablename__ = "gateway_ledger"
    __table_args__ = (Index("ix_gateway_ledger_key_ts", "key_id", "ts"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    ts: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    key_id: Mapped[str] = mapped_column(String(40))
    user: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    model: Mapped[str] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)


class UsageDailyRow(Base):
    """Daily roll-up of the ledger per (day, key, model, user); user '' = none. Reports read this table."""

    __tablename__ = "gateway_usage_daily"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    user: Mapped[str] = mapped_column(String(256), primary_key=True)
    num_requests: Mapped[int] = mapped_column(BigInteger)
    num_errors: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    latency_ms_sum: Mapped[int] = mapped_column(BigInteger)


class AuditRow(Base):
    """One audit entry. `hash` = SHA-256 over `prev_hash` and the canonical content (see audit.py); the
    plaintext `user` is outside the hash (only `user_digest` is inside), so erasure can blank it."""

    __tablename__ = "gateway_audit"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(40))
    decision: Mapped[str] = mapped_column(String(20))
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    user_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pii_types: Mapped[str] = mapped_column(String(400), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The single row (id 1) that serialises appends: the last seq and hash, and the anchor (seq and hash of
    the last entry removed by a retention purge) where verification starts."""

    __tablename__ = "gateway_audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    anchor_seq: Mapped[int] = mapped_column(BigInteger)
    anchor_hash: Mapped[str] = mapped_column(String(64))
