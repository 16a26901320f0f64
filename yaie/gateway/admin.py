"""/admin/* HTTP endpoints, protected by `Authorization: Bearer $YAIE_ADMIN_KEY` (compared in constant time;
without the variable the admin API is off: 403). Bad input gets a 400 naming the field (the server's
validation handler), an unknown key id 404. Changes apply to this server's key cache at once.

POST /admin/keys, GET /admin/keys, GET|PATCH /admin/keys/{id}, POST /admin/keys/{id}/revoke,
GET /admin/usage?by=&since=&until=&format=json|csv, GET /admin/audit?limit=&before_seq=, GET /admin/audit/verify,
POST /admin/erase {"user"}, POST /admin/retention/purge {"days"}.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from yaie.gateway.config import ADMIN_KEY_ENV, usd_to_micros
from yaie.gateway.keys import KeyNotFoundError, KeyRecord, KeySpec, hash_secret
from yaie.gateway.reports import render_report
from yaie.gateway.service import Gateway
from yaie.server.errors import APIError

ACTOR = "admin"


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrency: int | None = Field(None, ge=1)
    budget_usd: float | str | None = None
    budget_period: Literal["day", "month"] = "month"
    expires_at: dt.datetime | None = None
    pii_mode: Literal["off", "redact", "block"] = "off"


class KeyCreate(KeyFields):
    name: str = Field(min_length=1, max_length=200)


class KeyUpdate(KeyFields):
    name: str | None = Field(None, min_length=1, max_length=200)
    budget_period: Literal["day", "month"] | None = None  # type: ignore[assignment]
    pii_mode: Literal["off", "redact", "block"] | None = None  # type: ignore[assignment]


class EraseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=256)


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int | None = Field(None, ge=1)


async def _gateway(request: Request) -> Gateway:  # async: FastAPI runs a sync dependency on a thread
    gateway: Gateway = request.app.state.gateway
    admin_key = os.environ.get(ADMIN_KEY_ENV)
    if not admin_key:
        raise APIError(403, f"the admin API is disabled: set {ADMIN_KEY_ENV} on the server")
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_key.encode()):
        raise APIError(401, "missing or invalid admin key (send 'Authorization: Bearer <YAIE_ADMIN_KEY>')",
                       headers={"WWW-Authenticate": "Bearer"})
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
router = APIRouter(prefix="/admin")


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, gateway: GatewayDep) -> dict[str, Any]:
    spec = _spec(body.name, body.model_dump(exclude={"name"}))
    created = await gateway.storage.keys.create(spec, ACTOR)
    gateway.keys.put(hash_secret(created.secret), created.record)
    return {**created.record.public(), "secret": created.secret}


@router.get("/keys")
async def list_keys(gateway: GatewayDep) -> list[dict[str, Any]]:
    return [r.public() for r in await gateway.storage.keys.list()]


@router.get("/keys/{key_id}")
async def get_key(key_id: str, gateway: GatewayDep) -> dict[str, Any]:
    return (await _key_op(gateway.storage.keys.get(key_id))).public()


@router.patch("/keys/{key_id}")
async def update_key(key_id: str, body: KeyUpdate, gateway: GatewayDep) -> dict[str, Any]:
    changes = _spec_changes(body.model_dump(exclude_unset=True))
    record = await _key_op(gateway.storage.keys.update(key_id, ACTOR, **changes))
    gateway.keys.invalidate(record)
    return record.public()


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, gateway: GatewayDep) -> dict[str, Any]:
    record = await _key_op(gateway.storage.keys.revoke(key_id, ACTOR))
    gateway.keys.invalidate(record)
    return record.public()


@router.get("/usage", response_model=None)
async def usage(gateway: GatewayDep, by: Literal["key", "model", "user", "day"] = "key",
                since: dt.date | None = None, until: dt.date | None = None,
                format: Literal["json", "csv"] = "json") -> Response:
    try:
        report = await gateway.storage.reports.build(by, since, until)
    except ValueError as exc:
        raise APIError(400, str(exc), "since") from None
    if format == "csv":
        return PlainTextResponse(render_report(report, "csv"), media_type="text/csv")
    return JSONResponse(report.to_json())


@router.get("/audit")
async def audit(gateway: GatewayDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                before_seq: int | None = None) -> dict[str, Any]:
    return {"entries": await gateway.storage.audit.recent(limit, before_seq)}


@router.get("/audit/verify")
async def verify_audit(gateway: GatewayDep) -> dict[str, Any]:
    await gateway.ledger.flush()
    result = await gateway.storage.audit.verify()
    return {"valid": result.is_valid, "num_checked": result.num_checked,
            "first_broken_seq": result.first_broken_seq, "reason": result.reason}


@router.post("/erase")
async def erase(body: EraseRequest, gateway: GatewayDep) -> dict[str, int]:
    await gateway.ledger.flush()  # rows still buffered must be erased too
    return await gateway.storage.erase_user(body.user, ACTOR)


@router.post("/retention/purge")
async def purge(body: PurgeRequest, gateway: GatewayDep) -> dict[str, int]:
    days = body.days if body.days is not None else gateway.config.retention_days
    if days is None:
        raise APIError(400, "days is required (no retention_days in the gateway config)", "days")
    return await gateway.storage.purge_older_than(days, ACTOR)


def install_admin(app: FastAPI, gateway: Gateway) -> None:
    app.state.gateway = gateway
    app.include_router(router)


def _spec(name: str, fields: dict[str, Any]) -> KeySpec:
    try:
        return KeySpec(name=name, **_spec_changes(fields))
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


def _spec_changes(fields: dict[str, Any]) -> dict[str, Any]:
    """API field names and units -> KeySpec fields (USD -> micro-dollars, aware times -> naive UTC)."""
    changes = dict(fields)
    if "budget_usd" in changes:
        value = changes.pop("budget_usd")
        try:
            changes["budget_micros"] = None if value is None else usd_to_micros(value, "budget_usd")
        except ValueError as exc:
            raise APIError(400, str(exc), "budget_usd") from None
    if changes.get("models") is not None:
        changes["models"] = tuple(changes["models"])
    expires = changes.get("expires_at")
    if expires is not None and expires.tzinfo is not None:
        changes["expires_at"] = expires.astimezone(dt.UTC).replace(tzinfo=None)
    return {k: v for k, v in changes.items() if not (k in ("name", "budget_period", "pii_mode") and v is None)}


async def _key_op(operation: Any) -> KeyRecord:
    try:
        return await operation
    except KeyNotFoundError as exc:
        raise APIError(404, str(exc), "key_id") from None
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
