"""`yaie keys create|list|revoke`, `yaie usage report`, `yaie audit verify|purge`, `yaie erase --user`.

Each command opens the gateway database named by `--gateway-config FILE` (a bare gateway mapping or a file with
a `gateway:` section), `--config FILE` (the serve config's `gateway:` section), `--data-dir` or `--database-url`
(env YAIE_GATEWAY_CONFIG, YAIE_CONFIG, YAIE_DATA_DIR, YAIE_DATABASE_URL), migrates it, and acts as actor `cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from yaie.gateway.config import GatewayConfig, load_gateway_config, usd_to_micros

ACTOR = "cli"
_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_gateway_parsers(sub: Any) -> None:
    """Register the gateway's subcommands on the `yaie` parser's subparsers."""
    _add_keys_parser(sub)
    usage = sub.add_parser("usage", help="Usage and cost reports from the gateway ledger.")
    usage_sub = usage.add_subparsers(dest="usage_command", required=True)
    report = usage_sub.add_parser("report", help="Totals grouped by key, model, user or day, with hints.")
    _add_db_options(report)
    report.add_argument("--by", choices=("key", "model", "user", "day"), default="key")
    report.add_argument("--since", type=_date, default=None, help="First day (YYYY-MM-DD, UTC), inclusive.")
    report.add_argument("--until", type=_date, default=None, help="Last day (YYYY-MM-DD, UTC), inclusive.")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.set_defaults(func=lambda a: _run(a, _usage_report))
    audit = sub.add_parser("audit", help="The gateway's hash-chained audit log.")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="Check the chain; names the first broken entry (exit 1).")
    _add_db_options(verify)
    verify.set_defaults(func=lambda a: _run(a, _audit_verify))
    purge = audit_sub.add_parser("purge", help="Apply retention_days now to ledger and audit content.")
    _add_db_options(purge)
    purge.add_argument("--days", type=int, default=None, help="Keep this many days (default: retention_days).")
    purge.set_defaults(func=lambda a: _run(a, _retention_purge))
    erase = sub.add_parser("erase", help="Erase an end-user's usage rows and audit identity (GDPR).")
    _add_db_options(erase)
    erase.add_argument("--user", required=True, help="The end-user id (the `user` field of requests).")
    erase.set_defaults(func=lambda a: _run(a, _erase_user))


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Manage gateway API keys.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="Create a key; its secret is printed once.")
    _add_db_options(create)
    create.add_argument("--name", required=True)
    create.add_argument("--models", default=None, help="Comma-separated model names the key may use (default all).")
    create.add_argument("--rpm", type=int, default=None, help="Requests per minute.")
    create.add_argument("--tpm", type=int, default=None, help="Tokens (prompt + completion) per minute.")
    create.add_argument("--max-concurrency", type=int, default=None, help="Requests in flight at once.")
    create.add_argument("--budget-usd", default=None, help="Spend limit per budget period, in USD.")
    create.add_argument("--budget-period", choices=("day", "month"), default="month")
    create.add_argument("--expires", type=_expiry, default=None,
                        help="Expiry: an ISO date/time (UTC) or a duration such as 30d, 12h.")
    create.add_argument("--pii-mode", choices=("off", "redact", "block"), default="off")
    create.set_defaults(func=lambda a: _run(a, _keys_create))
    listing = keys_sub.add_parser("list", help="List keys (never their secrets).")
    _add_db_options(listing)
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=lambda a: _run(a, _keys_list))
    revoke = keys_sub.add_parser("revoke", help="Revoke a key by id (running servers notice within seconds).")
    _add_db_options(revoke)
    revoke.add_argument("key_id")
    revoke.set_defaults(func=lambda a: _run(a, _keys_revoke))


def _add_db_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway-config", type=Path, default=None, help="Gateway YAML (env YAIE_GATEWAY_CONFIG).")
    parser.add_argument("--config", type=Path, default=None, help="Serve YAML with a gateway: section.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Directory of gateway.db (env YAIE_DATA_DIR).")
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL (env YAIE_DATABASE_URL).")


def resolve_cli_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> GatewayConfig:
    env = dict(os.environ) if environ is None else environ
    data_dir = args.data_dir or (Path(env["YAIE_DATA_DIR"]) if env.get("YAIE_DATA_DIR") else None)
    path = args.gateway_config or (Path(env["YAIE_GATEWAY_CONFIG"]) if env.get("YAIE_GATEWAY_CONFIG") else None)
    config: GatewayConfig | None = None
    if path is not None:
        config = load_gateway_config(path, data_dir, section_required=True)
    else:
        serve_config = args.config or (Path(env["YAIE_CONFIG"]) if env.get("YAIE_CONFIG") else None)
        if serve_config is not None:
            config = load_gateway_config(serve_config, data_dir)
    if config is None:
        config = GatewayConfig() if data_dir is None else GatewayConfig(data_dir=data_dir)
    url = args.database_url or env.get("YAIE_DATABASE_URL")
    return replace(config, database_url=url) if url else config


def _run(args: argparse.Namespace, command: Callable[[Any, argparse.Namespace], Awaitable[int]]) -> int:
    from yaie.gateway.storage import open_storage

    try:
        config = resolve_cli_config(args)
    except ValueError as exc:
        print(f"yaie {args.command}: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        storage = await open_storage(config)
        try:
            return await command(storage, args)
        finally:
            await storage.close()

    try:
        return asyncio.run(main())
    except (ValueError, LookupError) as exc:
        print(f"yaie {args.command}: {exc}", file=sys.stderr)
        return 2


async def _keys_create(storage: Any, args: argparse.Namespace) -> int:
    from yaie.gateway.keys import KeySpec

    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models is not None else None
    budget = None if args.budget_usd is None else usd_to_micros(args.budget_usd, "--budget-usd")
    spec = KeySpec(name=args.name, models=models, rpm=args.rpm, tpm=args.tpm, max_concurrency=args.max_concurrency,
                   budget_micros=budget, budget_period=args.budget_period, expires_at=args.expires,
                   pii_mode=args.pii_mode)
    created = await storage.keys.create(spec, ACTOR)
    print(f"created key {created.record.id} ({spec.name})")
    print(f"secret: {created.secret}")
    print("store the secret now: it is not shown again")
    return 0


async def _keys_list(storage: Any, args: argparse.Namespace) -> int:
    records = [r.public() for r in await storage.keys.list()]
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return 0
    columns = ("id", "name", "status", "models", "rpm", "tpm", "max_concurrency", "budget_usd", "budget_period",
               "pii_mode", "expires_at")
    rows = [[_cell(r[c]) for c in columns] for r in records]
    print(format_table(list(columns), rows))
    return 0


async def _keys_revoke(storage: Any, args: argparse.Namespace) -> int:
    record = await storage.keys.revoke(args.key_id, ACTOR)
    print(f"revoked key {record.id} ({record.spec.name})")
    return 0


async def _usage_report(storage: Any, args: argparse.Namespace) -> int:
    from yaie.gateway.reports import render_report

    report = await storage.reports.build(args.by, args.since, args.until)
    print(render_report(report, args.format))
    return 0


async def _audit_verify(storage: Any, args: argparse.Namespace) -> int:
    result = await storage.audit.verify()
    if result.is_valid:
        print(f"audit log OK: {result.num_checked} entries verified")
        return 0
    print(f"audit log BROKEN at entry {result.first_broken_seq}: {result.reason} "
          f"({result.num_checked} entries verified before it)")
    return 1


async def _retention_purge(storage: Any, args: argparse.Namespace) -> int:
    days = args.days if args.days is not None else storage.config.retention_days
    if days is None or days < 1:
        raise ValueError("--days must be >= 1 (or set retention_days in the gateway config)")
    counts = await storage.purge_older_than(days, ACTOR)
    print(json.dumps(counts))
    return 0


async def _erase_user(storage: Any, args: argparse.Namespace) -> int:
    counts = await storage.erase_user(args.user, ACTOR)
    print(json.dumps(counts))
    return 0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _expiry(text: str) -> dt.datetime:
    """'30d' / '12h' from now, or an ISO date/time (UTC)."""
    match = _RELATIVE.match(text)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if match:
        return now + dt.timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date/time or a duration like 30d, got {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value
