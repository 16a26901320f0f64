"""Synthetic benchmark prompts and arrival schedules."""

from __future__ import annotations

import itertools
import statistics

import pytest

from yaie.bench.prompts import (
    DEFAULT_TOKEN_ID_RANGE,
    PromptSpec,
    poisson_send_offsets_s,
    random_token_id_prompts,
    random_word_prompts,
    safe_token_id_range,
)


def test_token_id_prompts_have_exact_lengths_and_stay_in_range() -> None:
    prompts = random_token_id_prompts(PromptSpec(num_prompts=5, input_len=37, token_id_range=(100, 200)))
    assert len(prompts) == 5
    assert all(len(p) == 37 for p in prompts)
    assert all(100 <= token_id < 200 for p in prompts for token_id in p)
    assert len({tuple(p) for p in prompts}) == 5


def test_shared_prefix_is_shared_and_the_rest_differs() -> None:
    prompts = random_token_id_prompts(PromptSpec(num_prompts=4, input_len=20, shared_prefix_len=12))
    assert all(p[:12] == prompts[0][:12] for p in prompts)
    assert len({tuple(p[12:]) for p in prompts}) == 4
    whole = random_token_id_prompts(PromptSpec(num_prompts=3, input_len=8, shared_prefix_len=8))
    assert whole[0] == whole[1] == whole[2]


def test_prompts_are_reproducible_from_the_seed() -> None:
    spec = PromptSpec(num_prompts=3, input_len=16, seed=7)
    assert random_token_id_prompts(spec) == random_token_id_prompts(spec)
    assert random_token_id_prompts(spec) != random_token_id_prompts(PromptSpec(3, 16, seed=8))
    assert random_word_prompts(spec) == random_word_prompts(spec)


def test_word_prompts_have_exact_word_counts_and_shared_prefix() -> None:
    prompts = random_word_prompts(PromptSpec(num_prompts=3, input_len=25, shared_prefix_len=10))
    words = [p.split(" ") for p in prompts]
    assert all(len(w) == 25 for w in words)
    assert all(w[:10] == words[0][:10] for w in words)
    assert all(word.isalpha() for w in words for word in w)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"num_prompts": 0, "input_len": 4}, "num_prompts"),
        ({"num_prompts": 1, "input_len": 0}, "input_len"),
        ({"num_prompts": 1, "input_len": 4, "shared_prefix_len": 5}, "shared_prefix_len"),
        ({"num_prompts": 1, "input_len": 4, "shared_prefix_len": -1}, "shared_prefix_len"),
        ({"num_prompts": 1, "input_len": 4, "token_id_range": (10, 10)}, "token_id_range"),
    ],
)
def test_prompt_spec_validation_names_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        PromptSpec(**kwargs)


def test_safe_token_id_range_fits_small_vocabularies() -> None:
    assert safe_token_id_range(None) == DEFAULT_TOKEN_ID_RANGE
    assert safe_token_id_range(49152) == DEFAULT_TOKEN_ID_RANGE
    assert safe_token_id_range(256) == (64, 256)
    low, high = safe_token_id_range(5000)
    assert (low, high) == (1000, 5000)
    with pytest.raises(ValueError, match="vocab_size"):
        safe_token_id_range(1)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert poisson_send_offsets_s(4, float("inf")) == [0.0, 0.0, 0.0, 0.0]


def test_poisson_offsets_have_the_requested_mean_rate() -> None:
    offsets_s = poisson_send_offsets_s(4001, request_rate=8.0, seed=3)
    assert offsets_s[0] == 0.0
    gaps_s = [b - a for a, b in itertools.pairwise(offsets_s)]
    assert all(gap >= 0 for gap in gaps_s)
    assert statistics.fmean(gaps_s) == pytest.approx(1 / 8.0, rel=0.08)
    # exponential intervals: standard deviation equals the mean
    assert statistics.pstdev(gaps_s) == pytest.approx(1 / 8.0, rel=0.1)
    regular = poisson_send_offsets_s(4001, request_rate=8.0, burstiness=100.0, seed=3)
    regular_gaps = [b - a for a, b in itertools.pairwise(regular)]
    assert statistics.pstdev(regular_gaps) < 0.2 * statistics.fmean(regular_gaps)


@pytest.mark.parametrize(
    ("args", "param"),
    [((0, 1.0), "num_requests"), ((3, 0.0), "request_rate"), ((3, 1.0, 0.0), "burstiness")],
)
def test_schedule_validation(args: tuple, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        poisson_send_offsets_s(*args)
