"""Serving-benchmark statistics, defined exactly as `vllm bench serve` defines them. Pure: no I/O.

Per request (times in seconds, measured by the client from the moment it sends the request):
- TTFT: until the first streamed chunk carrying output.
- E2E latency: until the last streamed chunk.
- ITL: every gap between consecutive chunks carrying output (all requests' gaps pooled).
- TPOT: (latency - TTFT) / (output_tokens - 1); only requests with more than one output token contribute.
Aggregates: throughputs divide totals over successful requests by the benchmark's wall duration; percentiles
use linear interpolation (numpy's default), as vLLM does; an empty sample reports 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it.

    `prompt_len` / `output_len` are token counts: the server's usage when it reported one, else the intended
    prompt length and the number of output-carrying chunks. `itl_s` has one entry per chunk after the first.
    """

    success: bool
    prompt_len: int
    output_len: int
    ttft_s: float
    latency_s: float
    itl_s: tuple[float, ...] = ()
    error: str | None = None
    usage_reported: bool = False


@dataclass(frozen=True)
class Distribution:
    """Summary of one metric in milliseconds."""

    mean_ms: float
    std_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class BenchmarkMetrics:
    duration_s: float
    num_completed: int
    num_failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution


def percentile(values_s: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; 0.0 for an empty sample."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values_s:
        return 0.0
    return float(np.percentile(np.asarray(values_s, dtype=np.float64), q))


def summarize_ms(values_s: Sequence[float]) -> Distribution:
    """Mean, std, median, p90, p99 and max of a sample given in seconds, reported in milliseconds."""
    if not values_s:
        return Distribution(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    values_ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(values_ms, [50, 90, 99])
    return Distribution(
        mean_ms=float(values_ms.mean()),
        std_ms=float(values_ms.std()),
        median_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(values_ms.max()),
    )


def request_tpot_s(result: RequestResult) -> float | None:
    """Time per output token after the first; None when the request has fewer than two output tokens."""
    if result.output_len <= 1:
        return None
    return (result.latency_s - result.ttft_s) / (result.output_len - 1)


def compute_metrics(results: Sequence[RequestResult], duration_s: float) -> BenchmarkMetrics:
    """Aggregate per-request results over a benchmark that took `duration_s` of wall time."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    completed = [r for r in results if r.success]
    tpots_s = [t for t in (request_tpot_s(r) for r in completed) if t is not None]
    total_input = sum(r.prompt_len for r in completed)
    total_output = sum(r.output_len for r in completed)
    return BenchmarkMetrics(
        duration_s=duration_s,
        num_completed=len(completed),
        num_failed=len(results) - len(completed),
        total_input_tokens=total_input,
        total_output_tokens=total_output,
        request_throughput=len(completed) / duration_s,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        ttft=summarize_ms([r.ttft_s for r in completed]),
        tpot=summarize_ms(tpots_s),
        itl=summarize_ms([gap for r in completed for gap in r.itl_s]),
        e2el=summarize_ms([r.latency_s for r in completed]),
    )


@dataclass(frozen=True)
class ThroughputResult:
    """An offline run: `num_requests` requests generating `num_output_tokens` in `elapsed_s` of wall time."""

    name: str
    num_requests: int
    num_input_tokens: int
    num_output_tokens: int
    elapsed_s: float

    def __post_init__(self) -> None:
        if self.elapsed_s <= 0:
            raise ValueError(f"elapsed_s must be > 0, got {self.elapsed_s}")

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.num_output_tokens / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.num_input_tokens + self.num_output_tokens) / self.elapsed_s


def speedup(ours: ThroughputResult, baseline: ThroughputResult) -> float:
    """Ratio of output tokens/s, ours over the baseline's."""
    if baseline.num_output_tokens == 0:
        raise ValueError("baseline generated no tokens; the ratio is undefined")
    return ours.output_tokens_per_s / baseline.output_tokens_per_s
