"""Reporting for `yaie bench compare`: the Markdown table (workload metrics x systems, plus "ours / best peer"
ratio columns), the goals it checks, the docs section between markers, the JSON document and the chart data.

A ratio divides one of our systems' value by the best peer's in the same row (best: highest for ↑ metrics,
lowest for ↓), so > 1 is better on ↑ rows and < 1 on ↓ rows. Peers are the systems that are not ours.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaie.bench.chart import ChartData, ChartPanel, write_chart
from yaie.bench.compare import CompareResult, SystemResult
from yaie.bench.report import write_json
from yaie.bench.workloads import ITL_TAIL_RATIO, W3_PREFIX_TTFT_GOAL, W4_ITL_TAIL_GOAL, metric_value

DOCS_BEGIN = "<!-- bench-compare:begin -->"
DOCS_END = "<!-- bench-compare:end -->"
DOCS_HEADING = "## Against peer servers (`yaie bench compare`)"


@dataclass(frozen=True)
class SystemColumn:
    name: str
    is_ours: bool
    failed: bool = False


@dataclass(frozen=True)
class TableRow:
    """One metric of one workload; `values` has one entry per system column (None: not measured)."""

    workload: str
    label: str
    higher_is_better: bool
    values: tuple[float | None, ...]


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    num_cores: int
    load_avg_1m: float

    def describe(self) -> str:
        return f"{self.cpu_model}, {self.num_cores} cores (load {self.load_avg_1m:.1f} at start)"


def machine_info() -> MachineInfo:
    """CPU model (first 'model name' of /proc/cpuinfo), usable cores, and the 1-minute load average."""
    cpu_model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    num_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return MachineInfo(cpu_model, num_cores, os.getloadavg()[0])


def ratio_to_best_peer(value: float | None, peer_values: Sequence[float | None], higher_is_better: bool) -> float | None:
    """`value` / the best peer value; None when either side is missing or the best peer value is 0."""
    present = [v for v in peer_values if v is not None]
    if value is None or not present:
        return None
    best = max(present) if higher_is_better else min(present)
    return value / best if best != 0 else None


def system_columns(result: CompareResult) -> tuple[SystemColumn, ...]:
    return tuple(SystemColumn(s.system, s.is_ours, s.error is not None) for s in result.systems)


def build_rows(result: CompareResult) -> list[TableRow]:
    """Server rows (start-up, idle RSS), then each workload's metrics and its peak RSS."""
    systems = result.systems
    rows = [
        TableRow("server", "start-up to ready (s) ↓", False, tuple(s.startup_s for s in systems)),
        TableRow("server", "idle RSS (MB) ↓", False, tuple(s.idle_rss_mb for s in systems)),
    ]
    for workload in result.workloads:
        for metric in workload.metrics:
            values = tuple(_workload_metric(s, workload.name, metric.role, metric.key) for s in systems)
            rows.append(TableRow(workload.name, metric.label, metric.higher_is_better, values))
        rss = tuple(_finite_or_none(w.peak_rss_mb) if (w := s.workload(workload.name)) else None for s in systems)
        rows.append(TableRow(workload.name, "peak RSS (MB) ↓", False, rss))
    return rows


def format_number(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def format_table(columns: Sequence[SystemColumn], rows: Sequence[TableRow]) -> str:
    """A Markdown table: workload | metric | one column per system | one "NAME / best peer" per ours system."""
    ours = [i for i, c in enumerate(columns) if c.is_ours]
    peers = [i for i, c in enumerate(columns) if not c.is_ours]
    header = ["workload", "metric", *(c.name + (" (failed)" if c.failed else "") for c in columns)]
    header += [f"{columns[i].name} / best peer" for i in ours] if peers else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row.values) != len(columns):
            raise ValueError(f"row {row.label!r} has {len(row.values)} values for {len(columns)} columns")
        cells = [row.workload, row.label]
        cells += [_cell(value, column) for value, column in zip(row.values, columns, strict=True)]
        if peers:
            peer_values = [row.values[i] for i in peers]
            for i in ours:
                ratio = ratio_to_best_peer(row.values[i], peer_values, row.higher_is_better)
                cells.append("—" if ratio is None else f"{ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, column: SystemColumn) -> str:
    return "failed" if value is None and column.failed else format_number(value)


def goal_lines(result: CompareResult) -> list[str]:
    """W3: TTFT p50 with prefix caching over the same system without it (≤ 0.25); W4: ITL p99/p50 (≤ 3)."""
    names = {s.system for s in result.systems}
    lines = []
    for system in (s for s in result.systems if s.is_ours):
        if "W3" in _names(result) and "noprefix" not in system.system.split("-"):
            reference = next((n for n in (f"{system.system}-noprefix", "yaie-noprefix") if n in names), None)
            if reference is not None:
                ours = _workload_metric(system, "W3", "main", "ttft.median_ms")
                theirs = _workload_metric(_system(result, reference), "W3", "main", "ttft.median_ms")
                ratio = ours / theirs if ours is not None and theirs else None
                lines.append(_goal(f"W3 TTFT p50, {system.system} / {reference}", ratio, W3_PREFIX_TTFT_GOAL))
        if "W4" in _names(result):
            ratio = _workload_metric(system, "W4", "streams", ITL_TAIL_RATIO)
            lines.append(_goal(f"W4 streams' ITL p99 / p50, {system.system}", ratio, W4_ITL_TAIL_GOAL))
    return lines


def _goal(label: str, value: float | None, limit: float) -> str:
    if value is None:
        return f"- {label}: not measured (goal ≤ {limit:g})"
    verdict = "met" if value <= limit else "**not met**"
    return f"- {label}: **{value:.2f}** (goal ≤ {limit:g}: {verdict})"


def format_markdown(
    result: CompareResult, command_line: str, machine: MachineInfo, chart_link: str | None = None
) -> str:
    """The whole docs section (without markers): provenance, workloads, table, goals, failures, chart."""
    config = result.config
    lines = [
        f"`{command_line}`", "",
        f"{result.date}; {machine.describe()}; model `{config.model.name}`; scale {config.scale:g}. "
        "Every request streams at temperature 0 with `ignore_eos`; one unmeasured warm-up request per server.",
        "",
        *(f"- **{w.name}**, {w.describe()}" for w in result.workloads),
        "", format_table(system_columns(result), build_rows(result)), "",
        "↑ higher is better, ↓ lower is better. A \"/ best peer\" column divides that system's value by the best "
        "peer's in the row (> 1 is better on ↑ rows, < 1 on ↓ rows). These machines are shared and noisy: trust "
        "same-run ratios more than absolute numbers.",
    ]
    goals = goal_lines(result)
    if goals:
        lines += ["", "Goals:", *goals]
    failed = [s for s in result.systems if s.error]
    if failed:
        lines += ["", "Failed:", *(f"- {s.system}: {_first_line(s.error or '')}" for s in failed)]
    request_failures = _request_failure_lines(result)
    if request_failures:
        lines += ["", "Failed requests (left out of the numbers above):", *request_failures]
    if chart_link:
        lines += ["", f"![output throughput, TTFT and TPOT per system and workload]({chart_link})"]
    return "\n".join(lines)


def _request_failure_lines(result: CompareResult) -> list[str]:
    lines = []
    for system in result.systems:
        for workload in system.workloads:
            for group in workload.groups:
                metrics = group.metrics
                if metrics.num_failed:
                    total = metrics.num_failed + metrics.num_completed
                    lines.append(f"- {system.system} {workload.workload} ({group.role}): {metrics.num_failed} of "
                                 f"{total}; first error: {_first_line(group.first_error or '')}")
    return lines


def replace_marked_section(text: str, body: str) -> str:
    """`text` with everything between DOCS_BEGIN and DOCS_END replaced by `body`; when the markers are absent,
    a heading and the marked section are appended."""
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if (begin < 0) != (end < 0) or (begin >= 0 and end < begin):
        raise ValueError(f"docs must contain both {DOCS_BEGIN} and {DOCS_END}, in that order, or neither")
    block = f"{DOCS_BEGIN}\n{body.strip()}\n{DOCS_END}"
    if begin < 0:
        separator = "" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
        return f"{text}{separator}{DOCS_HEADING}\n{block}\n"
    return text[:begin] + block + text[end + len(DOCS_END):]


def write_docs_section(docs_path: str | Path, body: str) -> None:
    path = Path(docs_path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(replace_marked_section(text, body))


def chart_link(chart_path: str | Path, docs_path: str | Path) -> str:
    """The chart's path relative to the docs file's folder (how Markdown resolves image links)."""
    return Path(os.path.relpath(Path(chart_path).resolve(), Path(docs_path).resolve().parent)).as_posix()


def chart_data(result: CompareResult) -> ChartData:
    """Output throughput, TTFT p50 and TPOT p50 of each workload's primary group, per system."""
    panels = []
    for title, key in (("output throughput (tok/s)", "output_throughput"), ("TTFT p50 (ms)", "ttft.median_ms"),
                       ("TPOT p50 (ms)", "tpot.median_ms")):
        values = tuple(tuple(_workload_metric(s, w.name, w.primary_role, key) for w in result.workloads)
                       for s in result.systems)
        panels.append(ChartPanel(title, values))
    return ChartData(f"yaie bench compare ({result.date}, scale {result.config.scale:g})",
                     tuple(w.name for w in result.workloads),
                     tuple(s.system + (" (failed)" if s.error else "") for s in result.systems), tuple(panels))


def compare_to_json(result: CompareResult, command_line: str, machine: MachineInfo) -> dict[str, Any]:
    """Every number: the config, workload definitions, each system's metrics per group, the table's rows and
    ratios, and the goals."""
    columns = system_columns(result)
    return _jsonable({
        "benchmark": "compare",
        "date": result.date,
        "command": command_line,
        "machine": dataclasses.asdict(machine),
        "config": {**dataclasses.asdict(result.config), "api_key": "***" if result.config.api_key else None},
        "workloads": [dataclasses.asdict(w) for w in result.workloads],
        "systems": [dataclasses.asdict(s) for s in result.systems],
        "table": {"columns": [dataclasses.asdict(c) for c in columns],
                  "rows": [dataclasses.asdict(r) for r in build_rows(result)]},
        "goals": goal_lines(result),
    })


def write_reports(
    result: CompareResult, command_line: str, json_path: str | Path | None, docs_path: str | Path | None,
    chart_path: str | Path | None,
) -> str:
    """Write the chart, the docs section and the JSON (each when its path is given); returns the Markdown."""
    machine = machine_info()
    link = None
    if chart_path is not None and any(s.workloads for s in result.systems):
        write_chart(chart_data(result), chart_path)
        link = chart_link(chart_path, docs_path) if docs_path is not None else str(chart_path)
    markdown = format_markdown(result, command_line, machine, link)
    if docs_path is not None:
        write_docs_section(docs_path, markdown)
    if json_path is not None:
        write_json(json_path, compare_to_json(result, command_line, machine))
    return markdown


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _workload_metric(system: SystemResult, workload: str, role: str, key: str) -> float | None:
    measured = system.workload(workload)
    return None if measured is None else metric_value(measured.metrics(role), key)


def _system(result: CompareResult, name: str) -> SystemResult:
    return next(s for s in result.systems if s.system == name)


def _names(result: CompareResult) -> set[str]:
    return {w.name for w in result.workloads}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no message)"
