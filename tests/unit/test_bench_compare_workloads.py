"""The workloads of `yaie bench compare`: their definitions, scaling, selection and metric lookup."""

from __future__ import annotations

import math

import pytest

from yaie.bench.stats import RequestResult, compute_metrics
from yaie.bench.workloads import (
    ITL_TAIL_RATIO,
    W1,
    W2_C16,
    W2_C32,
    W3,
    W4,
    WORKLOADS,
    MetricSpec,
    RunSpec,
    Workload,
    metric_value,
    select_workloads,
)


def test_definitions_match_the_issue() -> None:
    assert W1.groups == (("main", RunSpec(8, 128, 128, 1, seed=W1.groups[0][1].seed)),)
    for workload, concurrency in ((W2_C16, 16), (W2_C32, 32)):
        spec = workload.groups[0][1]
        assert (spec.num_prompts, spec.input_len, spec.output_len, spec.concurrency) == (64, 256, 128, concurrency)
    w3 = W3.groups[0][1]
    assert (w3.num_prompts, w3.input_len, w3.shared_prefix_len, w3.output_len, w3.concurrency) == (32, 432, 400, 64, 16)
    streams, long = dict(W4.groups)["streams"], dict(W4.groups)["long"]
    assert (streams.num_prompts, streams.input_len, streams.output_len, streams.concurrency) == (16, 128, 512, 16)
    assert (long.num_prompts, long.input_len, long.output_len, long.concurrency) == (5, 2000, 16, None)
    assert (long.start_delay_s, long.request_rate) == (2.0, 0.25)
    assert W4.primary_role == "streams"
    assert {m.key for m in W4.metrics} >= {"itl.median_ms", "itl.p99_ms", ITL_TAIL_RATIO, "ttft.max_ms"}


def test_every_group_has_its_own_seed_so_no_prompts_are_shared_across_groups() -> None:
    seeds = [spec.seed for workload in WORKLOADS for _, spec in workload.groups]
    assert len(seeds) == len(set(seeds))


def test_select_expands_a_family_keeps_order_and_drops_repeats() -> None:
    assert [w.name for w in select_workloads(["W3", "w2", "W1", "W2-c32"])] == ["W3", "W2-c16", "W2-c32", "W1"]
    assert [w.name for w in select_workloads(["W1", "W2", "W3", "W4"])] == ["W1", "W2-c16", "W2-c32", "W3", "W4"]


@pytest.mark.parametrize("names", [["W9"], []])
def test_select_rejects_unknown_or_no_names(names: list[str]) -> None:
    with pytest.raises(ValueError, match="workload"):
        select_workloads(names)


def test_scaling_multiplies_counts_lengths_and_time_offsets() -> None:
    (w3,) = select_workloads(["W3"], scale=0.25)
    spec = w3.groups[0][1]
    assert (spec.num_prompts, spec.input_len, spec.shared_prefix_len, spec.output_len) == (8, 108, 100, 16)
    assert spec.concurrency == 16 and spec.seed == W3.groups[0][1].seed
    long = dict(W4.scaled(0.5).groups)["long"]
    assert (long.num_prompts, long.input_len, long.start_delay_s, long.request_rate) == (2, 1000, 1.0, 0.5)


def test_tiny_scale_keeps_at_least_one_request_and_two_output_tokens() -> None:
    spec = RunSpec(8, 128, 128, 1, seed=0, shared_prefix_len=128).scaled(0.001)
    assert (spec.num_prompts, spec.input_len, spec.output_len, spec.shared_prefix_len) == (1, 1, 2, 0)
    with pytest.raises(ValueError, match="scale"):
        spec.scaled(0)


def test_describe_reports_the_scaled_numbers() -> None:
    (w4,) = select_workloads(["W4"], scale=0.5)
    text = w4.describe()
    assert "streams: 8 requests, 64 in / 256 out, concurrency 16" in text
    assert "long: 2 requests, 1000 in / 8 out, no concurrency cap, one about every 2.0 s, from 1.0 s in" in text


def test_invalid_definitions_are_rejected() -> None:
    with pytest.raises(ValueError, match="key"):
        MetricSpec("x", "main", "ttft.p42_ms", higher_is_better=False)
    with pytest.raises(ValueError, match="roles"):
        Workload("W", "W", "d", (("main", W1.groups[0][1]),), (MetricSpec("x", "other", "duration_s", False),))
    with pytest.raises(ValueError, match="shared_prefix_len"):
        RunSpec(1, 10, 10, 1, seed=0, shared_prefix_len=11)


def test_metric_value_reads_scalars_distributions_and_the_itl_tail_ratio() -> None:
    # two requests: ITL gaps 10 ms x 99 and one of 110 ms -> p50 10 ms, p99 ~11 ms
    gaps_s = (0.01,) * 99 + (0.11,)
    results = [RequestResult(True, 10, 51, 0.2, 0.2 + sum(gaps_s[:50]), gaps_s[:50]),
               RequestResult(True, 10, 51, 0.4, 0.4 + sum(gaps_s[50:]), gaps_s[50:])]
    metrics = compute_metrics(results, duration_s=2.0)
    assert metric_value(metrics, "output_throughput") == pytest.approx(51.0)
    assert metric_value(metrics, "ttft.median_ms") == pytest.approx(300.0)
    assert metric_value(metrics, "ttft.max_ms") == pytest.approx(400.0)
    p99_ms = metrics.itl.p99_ms
    assert p99_ms > 10.5
    assert metric_value(metrics, ITL_TAIL_RATIO) == pytest.approx(p99_ms / 10.0)


def test_metric_value_is_none_when_nothing_completed() -> None:
    metrics = compute_metrics([RequestResult(False, 10, 0, 0.0, 0.0, error="boom")], duration_s=1.0)
    assert metric_value(metrics, "output_throughput") is None
    assert math.isclose(metrics.output_throughput, 0.0)
