"""Budgets, pricing, the batched ledger and usage reports, on real SQLite and PostgreSQL (and redis)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import func, select

from tests.gateway.services import RedisServer, free_port
from tests.gateway.test_rate_limit import key
from yaie.gateway.audit import AuditEntry
from yaie.gateway.budget import BudgetKeeper, QuotaExceededError, current_period
from yaie.gateway.config import AlertConfig, ModelPrice, PricingConfig, gateway_config_from_mapping
from yaie.gateway.ledger import LedgerEntry, LedgerWriter, write_entries
from yaie.gateway.models import LedgerRow, UsageDailyRow, utcnow
from yaie.gateway.rate_limit import make_storage
from yaie.gateway.reports import render_report
from yaie.gateway.storage import GatewayStorage


def entry(key_id: str = "key_1", user: str | None = "u1", model: str = "m", cost: int = 100,
          ts: dt.datetime | None = None, status: int = 200, completion: int = 20) -> LedgerEntry:
    return LedgerEntry("req", ts or utcnow(), key_id, user, model, 10, 2, completion, cost, 50, status)


async def _no_spend(_key_id: str, _day: dt.date) -> int:
    return 0


@pytest.fixture(params=["memory", "redis"])
def counter_storage(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        return make_storage("memory")
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return make_storage(server.url)


async def test_concurrent_reservations_never_overshoot_the_budget(counter_storage) -> None:  # type: ignore[no-untyped-def]
    keeper = BudgetKeeper(counter_storage, _no_spend, AlertConfig())
    record = key(budget_micros=1000)
    now = utcnow()

    async def attempt() -> object:
        try:
            return await keeper.reserve(record, 300, now)
        except QuotaExceededError:
            return None

    holds = [h for h in await asyncio.gather(*(attempt() for _ in range(20))) if h is not None]
    assert len(holds) == 3
    for hold in holds:
        await keeper.settle(hold, record, 100, now)  # actual cost 100 of the 300 held
    assert await keeper.spent(record, now) == 300
    more = [h for h in await asyncio.gather(*(attempt() for _ in range(20))) if h is not None]
    assert len(more) == 2 and await keeper.spent(record, now) == 900
    with pytest.raises(QuotaExceededError, match=r"\$0.000100 of its \$0.001000 monthly budget left"):
        await keeper.reserve(record, 300, now)


async def test_budget_is_seeded_from_the_ledger_after_a_restart(storage: GatewayStorage) -> None:
    await write_entries(storage.db, [entry(cost=600), entry(cost=300, user=None)])
    keeper = BudgetKeeper(make_storage("memory"), storage.spend_since, AlertConfig())
    record = key(budget_micros=1000)
    with pytest.raises(QuotaExceededError):
        await keeper.reserve(record, 200, utcnow())
    assert await keeper.reserve(record, 100, utcnow()) is not None


async def test_alerts_log_and_post_to_the_webhook(caplog: pytest.LogCaptureFixture) -> None:
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        alerts = AlertConfig((0.8, 1.0), f"http://127.0.0.1:{server.server_port}/hook")
        keeper = BudgetKeeper(make_storage("memory"), _no_spend, alerts)
        record, now = key(budget_micros=1000), utcnow()
        with caplog.at_level(logging.WARNING, logger="yaie.gateway.budget"):
            hold = await keeper.reserve(record, 850, now)
            await keeper.settle(hold, record, 850, now)
            with pytest.raises(QuotaExceededError):
                await keeper.reserve(record, 200, now)
            for _ in range(100):
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.05)
    finally:
        server.shutdown()
    assert "reached 80% of its month budget" in caplog.text and "reached 100%" in caplog.text
    assert sorted(r["threshold"] for r in received) == [0.8, 1.0]
    assert received[0]["key_id"] == "key_1"


def test_periods() -> None:
    now = dt.datetime(2024, 2, 10, 15, 0)
    assert current_period("day", now).end == dt.datetime(2024, 2, 11)
    month = current_period("month", now)
    assert (month.start, month.end, month.label) == (dt.date(2024, 2, 1), dt.datetime(2024, 3, 1), "2024-02")


def test_prices_are_exact_integers() -> None:
    price = ModelPrice(prompt_micros_per_mtok=500_000, cached_micros_per_mtok=100_000,
                       completion_micros_per_mtok=1_500_000)  # $0.5 / $0.1 / $1.5 per million tokens
    assert price.cost_micros(1000, 0, 1000) == 2000
    assert price.cost_micros(1000, 1000, 0) == 100
    assert price.cost_micros(1, 0, 0) == 1  # rounded up, never free
    config = gateway_config_from_mapping({"pricing": {"models": {"gpt": {
        "prompt_usd_per_1k": "0.0005", "cached_usd_per_1k": 0.0001, "completion_usd_per_1k": 0.0015}},
        "local_gpu_hour_usd": 3.6, "local_tokens_per_s": 1000}})
    assert config.pricing.price_of("gpt") == price
    local = config.pricing.price_of("anything-else")
    assert local.completion_micros_per_mtok == 1_000_000  # $3.6/h at 1000 tok/s = $1 per million tokens
    assert local.prompt_micros_per_mtok == 250_000 and local.cached_micros_per_mtok == 100_000


@pytest.mark.parametrize(("section", "message"), [
    ({"rate_limit_storage": "memcached://x"}, "rate_limit_storage"),
    ({"retention_days": 0}, "retention_days"),
    ({"pii": {"score_threshold": 2}}, "pii.score_threshold"),
    ({"pii": {"colour": 1}}, "gateway.pii: unknown key"),
    ({"pricing": {"models": {"m": {"prompt_usd_per_1k": "abc"}}}}, "gateway.pricing.models.m.prompt_usd_per_1k"),
    ({"pricing": {"models": {"m": {"prompt_usd_per_1k": 0.1, "cached_usd_per_1k": 0.2}}}}, "cached_usd_per_1k"),
    ({"ledger_flush_interval_s": 5}, "ledger_flush_interval_s"),
    ({"budgets": 1}, "unknown key"),
])
def test_config_errors_name_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gateway_config_from_mapping(section)


async def test_ledger_writer_flushes_in_batches_and_on_close(storage: GatewayStorage) -> None:
    writer = LedgerWriter(storage.db, storage.audit, flush_interval_s=0.1)
    writer.start()
    for i in range(5):
        writer.record(entry(cost=10 * i), AuditEntry("key:key_1", "request", "allowed", key_id="key_1"))
    await asyncio.sleep(0.5)
    assert await _count(storage, LedgerRow) == 5  # flushed by the timer, not by close
    writer.record(entry(cost=7, model="other"))
    await writer.close()  # the clean shutdown flushes the rest
    assert await _count(storage, LedgerRow) == 6
    async with storage.db.session() as session:
        daily = (await session.execute(select(UsageDailyRow).order_by(UsageDailyRow.model))).scalars().all()
    assert [(d.model, d.num_requests, d.cost_micros, d.prompt_tokens) for d in daily] == [("m", 5, 100, 50),
                                                                                          ("other", 1, 7, 10)]
    assert (await storage.audit.verify()).num_checked == 5


async def test_reports_group_filter_and_hint(storage: GatewayStorage) -> None:
    day1, day2 = dt.datetime(2024, 5, 1, 12), dt.datetime(2024, 5, 2, 12)
    entries = [entry("key_a", "alice", "big", 1000, day1, completion=5) for _ in range(12)]
    entries += [entry("key_b", "bob", "small", 10, day2), entry("key_b", None, "small", 10, day2, status=429)]
    await write_entries(storage.db, entries)
    storage.reports.pricing = PricingConfig(models={"big": ModelPrice(1, 1, 100), "small": ModelPrice(1, 1, 10)})
    by_key = await storage.reports.build("key")
    assert [(r.group, r.num_requests, r.cost_micros) for r in by_key.rows] == [("key_a", 12, 12000),
                                                                               ("key_b", 2, 20)]
    assert by_key.totals.cost_micros == 12020 and by_key.top_spenders[0].group == "key_a"
    assert any("short answers" in h and "small" in h for h in by_key.hints)
    by_user = await storage.reports.build("user", since=dt.date(2024, 5, 2))
    assert [(r.group, r.num_requests, r.num_errors) for r in by_user.rows] == [("", 1, 1), ("bob", 1, 0)]
    by_day = await storage.reports.build("day", until=dt.date(2024, 5, 1))
    assert [r.group for r in by_day.rows] == ["2024-05-01"]
    assert render_report(by_day, "csv").splitlines()[1].startswith("2024-05-01,,12,0,120,24,60,0.012000")
    assert json.loads(render_report(by_key, "json"))["totals"]["cost_usd"] == pytest.approx(0.01202)
    with pytest.raises(ValueError, match="by must be one of"):
        await storage.reports.build("team")


async def _count(storage: GatewayStorage, table: type) -> int:
    async with storage.db.session() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())
