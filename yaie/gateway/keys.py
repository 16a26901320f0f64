"""API keys: creation (the secret is returned once; only its SHA-256 is stored), listing, update, revocation,
and the in-memory `KeyCache` the request path reads (no database read for a known key).

The cache is invalidated at once for changes made in this process and picks up changes made elsewhere (the
CLI, another server) by polling `updated_at` every `refresh_interval_s`; an unknown secret costs one indexed
read, then is remembered as unknown for `NEGATIVE_TTL_S`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from sqlalchemy import select

from yaie.gateway.audit import AuditEntry, AuditLog
from yaie.gateway.db import Database
from yaie.gateway.models import ApiKeyRow, utcnow

SECRET_PREFIX = "yaie-"
NEGATIVE_TTL_S = 1.0
BudgetPeriod = Literal["day", "month"]
PIIMode = Literal["off", "redact", "block"]
BUDGET_PERIODS = ("day", "month")
PII_MODES = ("off", "redact", "block")


class KeyNotFoundError(LookupError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}")
        self.key_id = key_id


@dataclass(frozen=True)
class KeySpec:
    """What a key may do. None = unlimited / any model / never expires."""

    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_micros: int | None = None
    budget_period: BudgetPeriod = "month"
    expires_at: dt.datetime | None = None
    pii_mode: PIIMode = "off"

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise ValueError("name must be 1 to 200 characters")
        if self.models is not None and (not self.models or any(not m for m in self.models)):
            raise ValueError("models must be a non-empty list of model names (or omitted for all models)")
        for name in ("rpm", "tpm", "max_concurrency", "budget_micros"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.budget_period not in BUDGET_PERIODS:
            raise ValueError(f"budget_period must be one of {', '.join(BUDGET_PERIODS)}, got {self.budget_period!r}")
        if self.pii_mode not in PII_MODES:
            raise ValueError(f"pii_mode must be one of {', '.join(PII_MODES)}, got {self.pii_mode!r}")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    secret_prefix: str
    spec: KeySpec
    created_at: dt.datetime
    updated_at: dt.datetime
    revoked_at: dt.datetime | None = None

    def is_usable(self, now: dt.datetime) -> bool:
        expires = self.spec.expires_at
        return self.revoked_at is None and (expires is None or now < expires)

    def allows_model(self, model: str) -> bool:
        return self.spec.models is None or model in self.spec.models

    def public(self) -> dict[str, Any]:
        """The JSON shape of `keys list` and /admin/keys (never the secret or its hash)."""
        spec = self.spec
        return {
            "id": self.id, "name": spec.name, "prefix": self.secret_prefix,
            "models": list(spec.models) if spec.models is not None else None,
            "rpm": spec.rpm, "tpm": spec.tpm, "max_concurrency": spec.max_concurrency,
            "budget_usd": None if spec.budget_micros is None else spec.budget_micros / 1e6,
            "budget_micros": spec.budget_micros, "budget_period": spec.budget_period, "pii_mode": spec.pii_mode,
            "expires_at": _iso(spec.expires_at), "created_at": _iso(self.created_at),
            "revoked_at": _iso(self.revoked_at), "status": self.status(utcnow()),
        }

    def status(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.is_usable(now) else "expired"


@dataclass(frozen=True)
class CreatedKey:
    record: KeyRecord
    secret: str  # shown once


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Durable key operations; every change is audited as `actor`."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    async def create(self, spec: KeySpec, actor: str) -> CreatedKey:
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = ApiKeyRow(id="key_" + secrets.token_hex(8), secret_hash=hash_secret(secret),
                        secret_prefix=secret[:12], created_at=now, updated_at=now, **_spec_columns(spec))
        async with self.db.session() as session, session.begin():
            session.add(row)
        record = _record(row)
        await self.audit.append([AuditEntry(actor, "key.create", "done", key_id=row.id,
                                            detail={"key": _audit_view(record)})])
        return CreatedKey(record, secret)

    async def list(self) -> list[KeyRecord]:
        async with self.db.session() as session:
            rows = (await session.execute(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).scalars().all()
        return [_record(r) for r in rows]

    async def get(self, key_id: str) -> KeyRecord:
        async with self.db.session() as session:
            row = await session.get(ApiKeyRow, key_id)
        if row is None:
            raise KeyNotFoundError(key_id)
        return _record(row)

    async def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        async with self.db.session() as session:
            row = (await session.execute(select(ApiKeyRow).where(ApiKeyRow.secret_hash == secret_hash))).scalar()
        return None if row is None else _record(row)

    async def changed_since(self, since: dt.datetime | None) -> list[tuple[str, KeyRecord]]:
        """(secret hash, record) of keys updated at or after `since` (all keys when None)."""
        query = select(ApiKeyRow)
        if since is not None:
            query = query.where(ApiKeyRow.updated_at >= since)
        async with self.db.session() as session:
            rows = (await session.execute(query)).scalars().all()
        return [(r.secret_hash, _record(r)) for r in rows]

    async def update(self, key_id: str, actor: str, **changes: Any) -> KeyRecord:
        """Change spec fields (validated by KeySpec); returns the new record."""
        unknown = set(changes) - {f.name for f in fields(KeySpec)}
        if unknown:
            raise ValueError(f"unknown key field(s): {', '.join(sorted(unknown))}")
        async with self.db.session() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                raise KeyNotFoundError(key_id)
            spec = replace(_record(row).spec, **changes)
            for column, value in _spec_columns(spec).items():
                setattr(row, column, value)
            row.name, row.updated_at = spec.name, utcnow()
        record = _record(row)
        await self.audit.append([AuditEntry(actor, "key.update", "done", key_id=key_id,
                                            detail={"changes": sorted(changes), "key": _audit_view(record)})])
        return record

    async def revoke(self, key_id: str, actor: str) -> KeyRecord:
        async with self.db.session() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                raise KeyNotFoundError(key_id)
            if row.revoked_at is None:
                row.revoked_at = row.updated_at = utcnow()
        await self.audit.append([AuditEntry(actor, "key.revoke", "done", key_id=key_id)])
        return _record(row)


class KeyCache:
    """Secret -> KeyRecord for the request path. `lookup` touches the database only for unknown secrets."""

    def __init__(self, store: KeyStore, refresh_interval_s: float) -> None:
        self.store = store
        self.refresh_interval_s = refresh_interval_s
        self._by_hash: dict[str, KeyRecord] = {}
        self._unknown_until: dict[str, float] = {}
        self._synced_at: dt.datetime | None = None

    async def refresh(self) -> None:
        """Load keys changed since the last refresh (all on the first call)."""
        started = utcnow() - dt.timedelta(seconds=1)  # overlap: a change committed mid-refresh is seen next time
        for secret_hash, record in await self.store.changed_since(self._synced_at):
            self.put(secret_hash, record)
        self._synced_at = started

    def put(self, secret_hash: str, record: KeyRecord) -> None:
        self._by_hash[secret_hash] = record
        self._unknown_until.pop(secret_hash, None)

    def invalidate(self, record: KeyRecord) -> None:
        """Apply a change made in this process at once."""
        for secret_hash, cached in list(self._by_hash.items()):
            if cached.id == record.id:
                self._by_hash[secret_hash] = record

    async def lookup(self, secret: str) -> KeyRecord | None:
        secret_hash = hash_secret(secret)
        record = self._by_hash.get(secret_hash)
        if record is None:
            if self._unknown_until.get(secret_hash, 0.0) > time.monotonic():
                return None
            record = await self.store.find_by_hash(secret_hash)
            if record is None:
                if len(self._unknown_until) > 10_000:
                    self._unknown_until.clear()
                self._unknown_until[secret_hash] = time.monotonic() + NEGATIVE_TTL_S
                return None
            self._by_hash[secret_hash] = record
        # the dict lookup found the hash; compare once more in constant time as the contract says
        return record if hmac.compare_digest(secret_hash, hash_secret(secret)) else None


def _spec_columns(spec: KeySpec) -> dict[str, Any]:
    return {"name": spec.name, "models": list(spec.models) if spec.models is not None else None,
            "rpm": spec.rpm, "tpm": spec.tpm, "max_concurrency": spec.max_concurrency,
            "budget_micros": spec.budget_micros, "budget_period": spec.budget_period,
            "pii_mode": spec.pii_mode, "expires_at": spec.expires_at}


def _record(row: ApiKeyRow) -> KeyRecord:
    spec = KeySpec(name=row.name, models=tuple(row.models) if row.models is not None else None, rpm=row.rpm,
                   tpm=row.tpm, max_concurrency=row.max_concurrency, budget_micros=row.budget_micros,
                   budget_period=row.budget_period,  # type: ignore[arg-type]
                   expires_at=row.expires_at, pii_mode=row.pii_mode)  # type: ignore[arg-type]
    return KeyRecord(row.id, row.secret_prefix, spec, row.created_at, row.updated_at, row.revoked_at)


def _audit_view(record: KeyRecord) -> dict[str, Any]:
    view = record.public()
    view.pop("status", None)
    return view


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"
