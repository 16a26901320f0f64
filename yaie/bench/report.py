"""Plain-text tables and JSON documents for benchmark results. Pure formatting: no measurement here."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from yaie.bench.offline import OfflineBenchResult
from yaie.bench.serve import ServeBenchResult
from yaie.bench.stats import Distribution, ThroughputResult

_WIDTH = 50
_METRIC_TITLES: tuple[tuple[str, str, str], ...] = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
)


def _row(label: str, value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.2f}"
    return f"{label + ':':<40} {value}"


def _section(title: str) -> str:
    return f" {title} ".center(_WIDTH, "-")


def _distribution_rows(short: str, dist: Distribution) -> list[str]:
    return [
        _row(f"Mean {short} (ms)", dist.mean_ms),
        _row(f"Median {short} (ms)", dist.median_ms),
        _row(f"P90 {short} (ms)", dist.p90_ms),
        _row(f"P99 {short} (ms)", dist.p99_ms),
    ]


def format_serve_report(result: ServeBenchResult) -> str:
    """The table `yaie bench serve` prints, laid out like `vllm bench serve`'s."""
    config, metrics = result.config, result.metrics
    lines = [
        " Serving Benchmark Result ".center(_WIDTH, "="),
        _row("Model", result.model),
        _row("Endpoint / prompt format", f"{config.endpoint} / {result.prompt_format}"),
        _row("Input / output length (tokens)", f"{config.input_len} / {config.output_len}"),
        _row("Shared prefix length", config.shared_prefix_len),
        _row("Max concurrency", config.concurrency if config.concurrency else "unlimited"),
        _row("Request rate (req/s)", config.request_rate),
        _row("Successful requests", metrics.num_completed),
        _row("Failed requests", metrics.num_failed),
        _row("Benchmark duration (s)", metrics.duration_s),
        _row("Total input tokens", metrics.total_input_tokens),
        _row("Total generated tokens", metrics.total_output_tokens),
        _row("Request throughput (req/s)", metrics.request_throughput),
        _row("Output token throughput (tok/s)", metrics.output_throughput),
        _row("Total token throughput (tok/s)", metrics.total_token_throughput),
    ]
    for key, short, title in _METRIC_TITLES:
        lines.append(_section(title))
        lines.extend(_distribution_rows(short, getattr(metrics, key)))
    lines.append("=" * _WIDTH)
    lines.extend(_serve_warnings(result))
    return "\n".join(lines)


def _serve_warnings(result: ServeBenchResult) -> list[str]:
    warnings = []
    completed = [r for r in result.results if r.success]
    if completed and not all(r.usage_reported for r in completed):
        warnings.append("note: the server reported no usage for some requests; their output tokens were "
                        "counted as streamed chunks")
    short = [r for r in completed if r.output_len != result.config.output_len]
    if short:
        warnings.append(f"note: {len(short)} requests did not produce exactly {result.config.output_len} tokens "
                        "(server ignores ignore_eos?)")
    errors = [r.error for r in result.results if r.error]
    if errors:
        warnings.append(f"first error: {errors[0]}")
    return warnings


def serve_result_to_json(result: ServeBenchResult) -> dict[str, Any]:
    """Every number, the config, and per-request details."""
    return _finite({
        "benchmark": "serve",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": dataclasses.asdict(result.config),
        "model": result.model,
        "prompt_format": result.prompt_format,
        "metrics": dataclasses.asdict(result.metrics),
        "requests": [dataclasses.asdict(r) for r in result.results],
    })


def format_offline_report(result: OfflineBenchResult) -> str:
    """Ours and the naive baseline side by side, and the output-throughput ratio."""
    config = result.config
    runs = [result.ours] if result.baseline is None else [result.ours, result.baseline]
    header = f"{'':<22}" + "".join(f"{run.name:>24}" for run in runs)
    rows = [
        ("Requests", [f"{run.num_requests}" for run in runs]),
        ("Wall time (s)", [f"{run.elapsed_s:.2f}" for run in runs]),
        ("Requests/s", [f"{run.requests_per_s:.3f}" for run in runs]),
        ("Output tokens/s", [f"{run.output_tokens_per_s:.1f}" for run in runs]),
        ("Total tokens/s", [f"{run.total_tokens_per_s:.1f}" for run in runs]),
    ]
    lines = [
        " Offline Throughput Benchmark ".center(_WIDTH + 22, "="),
        f"Model: {result.model_name}",
        f"Per request: {config.input_len} input tokens, {config.output_len} output tokens (ignore_eos, greedy); "
        f"torch threads: {result.num_threads}",
        header,
    ]
    lines += [f"{label:<22}" + "".join(f"{cell:>24}" for cell in cells) for label, cells in rows]
    if result.ratio is not None:
        lines.append(f"Output tokens/s, ours / baseline: {result.ratio:.1f}x")
    lines.append("=" * (_WIDTH + 22))
    return "\n".join(lines)


def offline_result_to_json(result: OfflineBenchResult) -> dict[str, Any]:
    """Every number and the config of an offline run."""
    return _finite({
        "benchmark": "offline",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": dataclasses.asdict(result.config),
        "model": result.model_name,
        "num_threads": result.num_threads,
        "ours": throughput_to_json(result.ours),
        "baseline": None if result.baseline is None else throughput_to_json(result.baseline),
        "ratio_output_tokens_per_s": result.ratio,
    })


def throughput_to_json(run: ThroughputResult) -> dict[str, Any]:
    return {
        **dataclasses.asdict(run),
        "requests_per_s": run.requests_per_s,
        "output_tokens_per_s": run.output_tokens_per_s,
        "total_tokens_per_s": run.total_tokens_per_s,
    }


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    """Write strict JSON (non-finite floats become strings such as "inf")."""
    Path(path).write_text(json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
