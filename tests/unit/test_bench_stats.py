"""Benchmark statistics: vLLM's definitions of TTFT, TPOT, ITL, E2E and throughput, checked by hand."""

from __future__ import annotations

import pytest

from yaie.bench.stats import (
    RequestResult,
    ThroughputResult,
    compute_metrics,
    percentile,
    request_tpot_s,
    speedup,
    summarize_ms,
)


def _ok(prompt_len: int, output_len: int, ttft_s: float, latency_s: float, itl_s: tuple[float, ...]) -> RequestResult:
    return RequestResult(True, prompt_len, output_len, ttft_s, latency_s, itl_s, usage_reported=True)


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([], 50) == 0.0


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_summarize_reports_milliseconds() -> None:
    dist = summarize_ms([0.010, 0.020, 0.030, 0.040, 0.100])
    assert dist.mean_ms == pytest.approx(40.0)
    assert dist.median_ms == pytest.approx(30.0)
    assert dist.p90_ms == pytest.approx(76.0)  # 40 + 0.6 * (100 - 40)
    assert dist.p99_ms == pytest.approx(97.6)
    assert dist.max_ms == pytest.approx(100.0)
    assert dist.std_ms == pytest.approx(31.6227766, rel=1e-6)


def test_summarize_empty_sample_is_all_zero() -> None:
    dist = summarize_ms([])
    assert (dist.mean_ms, dist.median_ms, dist.p90_ms, dist.p99_ms, dist.max_ms) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_tpot_excludes_the_first_token() -> None:
    assert request_tpot_s(_ok(8, 11, ttft_s=0.5, latency_s=1.5, itl_s=())) == pytest.approx(0.1)
    assert request_tpot_s(_ok(8, 2, ttft_s=0.5, latency_s=0.7, itl_s=())) == pytest.approx(0.2)
    assert request_tpot_s(_ok(8, 1, ttft_s=0.5, latency_s=0.5, itl_s=())) is None
    assert request_tpot_s(_ok(8, 0, ttft_s=0.5, latency_s=0.5, itl_s=())) is None


def test_compute_metrics_aggregates_successful_requests_only() -> None:
    results = [
        _ok(10, 3, ttft_s=0.1, latency_s=0.5, itl_s=(0.2, 0.2)),
        _ok(20, 5, ttft_s=0.3, latency_s=0.7, itl_s=(0.1, 0.1, 0.1, 0.1)),
        _ok(30, 1, ttft_s=0.2, latency_s=0.2, itl_s=()),
        RequestResult(False, 40, 0, 0.0, 0.0, (), error="HTTP 500"),
    ]
    metrics = compute_metrics(results, duration_s=2.0)
    assert metrics.num_completed == 3
    assert metrics.num_failed == 1
    assert metrics.total_input_tokens == 60
    assert metrics.total_output_tokens == 9
    assert metrics.request_throughput == pytest.approx(1.5)
    assert metrics.output_throughput == pytest.approx(4.5)
    assert metrics.total_token_throughput == pytest.approx(34.5)
    # TTFT and E2E over the three successes; TPOT only over requests with more than one token
    assert metrics.ttft.mean_ms == pytest.approx(200.0)
    assert metrics.e2el.median_ms == pytest.approx(500.0)
    assert metrics.tpot.mean_ms == pytest.approx((200.0 + 100.0) / 2)
    # ITL pools every gap of every request: six gaps, two of 200 ms and four of 100 ms
    assert metrics.itl.mean_ms == pytest.approx(800.0 / 6)
    assert metrics.itl.median_ms == pytest.approx(100.0)
    assert metrics.itl.max_ms == pytest.approx(200.0)


def test_compute_metrics_with_every_request_failed() -> None:
    metrics = compute_metrics([RequestResult(False, 5, 0, 0.0, 0.0, error="boom")], duration_s=1.0)
    assert metrics.num_completed == 0
    assert metrics.num_failed == 1
    assert metrics.output_throughput == 0.0
    assert metrics.ttft.p99_ms == 0.0


def test_compute_metrics_rejects_non_positive_duration() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        compute_metrics([], duration_s=0.0)


def test_throughput_result_rates_and_speedup() -> None:
    ours = ThroughputResult("yaie", num_requests=64, num_input_tokens=64 * 256, num_output_tokens=64 * 128,
                            elapsed_s=32.0)
    baseline = ThroughputResult("naive", num_requests=8, num_input_tokens=8 * 256, num_output_tokens=8 * 128,
                                elapsed_s=64.0)
    assert ours.requests_per_s == pytest.approx(2.0)
    assert ours.output_tokens_per_s == pytest.approx(256.0)
    assert ours.total_tokens_per_s == pytest.approx(768.0)
    assert baseline.output_tokens_per_s == pytest.approx(16.0)
    assert speedup(ours, baseline) == pytest.approx(16.0)


def test_throughput_result_validation() -> None:
    with pytest.raises(ValueError, match="elapsed_s"):
        ThroughputResult("x", 1, 1, 1, elapsed_s=0.0)
    empty = ThroughputResult("x", 1, 1, 0, elapsed_s=1.0)
    with pytest.raises(ValueError, match="baseline generated no tokens"):
        speedup(empty, empty)
