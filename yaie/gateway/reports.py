"""Usage reports from the daily roll-up table (never the raw ledger), so they stay fast at millions of rows:
totals grouped by key, model, user or day over an inclusive day range, the top spenders, and hints on where
money is wasted."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select

from yaie.gateway.config import PricingConfig
from yaie.gateway.db import Database
from yaie.gateway.models import ApiKeyRow, UsageDailyRow

GroupBy = Literal["key", "model", "user", "day"]
GROUP_COLUMNS = {"key": UsageDailyRow.key_id, "model": UsageDailyRow.model, "user": UsageDailyRow.user,
                 "day": UsageDailyRow.day}
NUM_TOP_SPENDERS = 5
SHORT_ANSWER_TOKENS = 50
MIN_REQUESTS_FOR_HINT = 10
LONG_PROMPT_TOKENS = 1000
LOW_CACHE_RATIO = 0.1
HIGH_ERROR_RATIO = 0.2


@dataclass(frozen=True)
class UsageRow:
    group: str
    num_requests: int
    num_errors: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micros: int
    avg_latency_ms: float
    label: str = ""  # the key's name when grouped by key

    @property
    def cost_usd(self) -> float:
        return self.cost_micros / 1e6


@dataclass(frozen=True)
class UsageReport:
    group_by: str
    since: dt.date | None
    until: dt.date | None
    rows: list[UsageRow]
    totals: UsageRow
    top_spenders: list[UsageRow] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def row(r: UsageRow) -> dict[str, Any]:
            return asdict(r) | {"cost_usd": r.cost_usd}

        return {"group_by": self.group_by, "since": _iso(self.since), "until": _iso(self.until),
                "rows": [row(r) for r in self.rows], "totals": row(self.totals),
                "top_spenders": [row(r) for r in self.top_spenders], "hints": self.hints}


class ReportBuilder:
    def __init__(self, db: Database, pricing: PricingConfig) -> None:
        self.db = db
        self.pricing = pricing

    async def build(self, group_by: str, since: dt.date | None = None, until: dt.date | None = None) -> UsageReport:
        if group_by not in GROUP_COLUMNS:
            raise ValueError(f"by must be one of {', '.join(GROUP_COLUMNS)}, got {group_by!r}")
        if since is not None and until is not None and since > until:
            raise ValueError(f"since ({since}) must not be after until ({until})")
        rows = await self._grouped(GROUP_COLUMNS[group_by], since, until)
        names = await self._key_names() if group_by == "key" else {}
        rows = [UsageRow(**{**asdict(r), "label": names.get(r.group, "")}) for r in rows]
        by_key = rows if group_by == "key" else await self._grouped(UsageDailyRow.key_id, since, until)
        top = sorted(by_key, key=lambda r: r.cost_micros, reverse=True)[:NUM_TOP_SPENDERS]
        hints = await self._hints(since, until)
        return UsageReport(group_by, since, until, rows, _total(rows), top, hints)

    async def _grouped(self, column: Any, since: dt.date | None, until: dt.date | None) -> list[UsageRow]:
        t = UsageDailyRow
        query = select(column, func.sum(t.num_requests), func.sum(t.num_errors), func.sum(t.prompt_tokens),
                       func.sum(t.cached_tokens), func.sum(t.completion_tokens), func.sum(t.cost_micros),
                       func.sum(t.latency_ms_sum)).group_by(column).order_by(column)
        query = _in_range(query, since, until)
        async with self.db.session() as session:
            result = (await session.execute(query)).all()
        return [_usage_row(str(r[0]), [int(v or 0) for v in r[1:]]) for r in result]

    async def _key_names(self) -> dict[str, str]:
        async with self.db.session() as session:
            return {k: n for k, n in (await session.execute(select(ApiKeyRow.id, ApiKeyRow.name))).all()}

    async def _hints(self, since: dt.date | None, until: dt.date | None) -> list[str]:
        t = UsageDailyRow
        query = _in_range(select(t.key_id, t.model, func.sum(t.num_requests), func.sum(t.num_errors),
                                 func.sum(t.prompt_tokens), func.sum(t.cached_tokens), func.sum(t.completion_tokens),
                                 func.sum(t.cost_micros)).group_by(t.key_id, t.model), since, until)
        async with self.db.session() as session:
            pairs = (await session.execute(query)).all()
        prices = {m: p.completion_micros_per_mtok for m, p in self.pricing.models.items()}
        hints: list[str] = []
        for key_id, model, *sums in pairs:
            hints += usage_hints(key_id, model, [int(v or 0) for v in sums], prices)
        return hints


def usage_hints(key_id: str, model: str, sums: list[int], completion_prices: dict[str, int]) -> list[str]:
    """Hints for one (key, model): sums = requests, errors, prompt, cached, completion, cost."""
    num_requests, num_errors, prompt, cached, completion, cost = sums
    if num_requests < MIN_REQUESTS_FOR_HINT:
        return []
    hints = []
    avg_completion = completion / num_requests
    cheaper = [m for m, p in completion_prices.items() if p < completion_prices.get(model, 0)]
    if avg_completion < SHORT_ANSWER_TOKENS and cheaper:
        hints.append(f"key {key_id} gets short answers (avg {avg_completion:.0f} tokens) from {model}, which costs "
                     f"more than {', '.join(sorted(cheaper))}: a cheaper model may do (spent ${cost / 1e6:.4f})")
    if prompt / num_requests > LONG_PROMPT_TOKENS and cached < LOW_CACHE_RATIO * prompt:
        hints.append(f"key {key_id} sends long prompts to {model} (avg {prompt / num_requests:.0f} tokens) with "
                     f"{100 * cached / max(prompt, 1):.0f}% served from the prefix cache: put the shared part "
                     "(system prompt, documents) first so it can be reused")
    if num_errors > HIGH_ERROR_RATIO * num_requests:
        hints.append(f"key {key_id}: {100 * num_errors / num_requests:.0f}% of {num_requests} requests to {model} "
                     "failed or were refused (limits, budget, bad input)")
    return hints


def render_report(report: UsageReport, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2)
    header = [report.group_by, "name", "requests", "errors", "prompt_tokens", "cached_tokens",
              "completion_tokens", "cost_usd", "avg_latency_ms"]
    rows = [_cells(r) for r in [*report.rows, report.totals]]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    from yaie.gateway.cli import format_table

    lines = [format_table(header, rows)]
    if report.top_spenders:
        lines.append("\ntop spenders: " + ", ".join(f"{r.group} ${r.cost_usd:.6f}" for r in report.top_spenders))
    lines += ["hint: " + h for h in report.hints]
    return "\n".join(lines)


def _cells(r: UsageRow) -> list[str]:
    return [r.group, r.label, str(r.num_requests), str(r.num_errors), str(r.prompt_tokens), str(r.cached_tokens),
            str(r.completion_tokens), f"{r.cost_usd:.6f}", f"{r.avg_latency_ms:.1f}"]


def _usage_row(group: str, sums: list[int]) -> UsageRow:
    num_requests, num_errors, prompt, cached, completion, cost, latency_sum = sums
    return UsageRow(group, num_requests, num_errors, prompt, cached, completion, cost,
                    latency_sum / num_requests if num_requests else 0.0)


def _total(rows: list[UsageRow]) -> UsageRow:
    sums = [sum(getattr(r, f) for r in rows) for f in ("num_requests", "num_errors", "prompt_tokens",
                                                       "cached_tokens", "completion_tokens", "cost_micros")]
    latency = sum(r.avg_latency_ms * r.num_requests for r in rows)
    return UsageRow("total", *sums, latency / sums[0] if sums[0] else 0.0)


def _in_range(query: Any, since: dt.date | None, until: dt.date | None) -> Any:
    if since is not None:
        query = query.where(UsageDailyRow.day >= since)
    if until is not None:
        query = query.where(UsageDailyRow.day <= until)
    return query


def _iso(day: dt.date | None) -> str | None:
    return None if day is None else day.isoformat()
