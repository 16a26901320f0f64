"""Sampler and SamplingMetadata on CPU with crafted logits."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pytest
import torch

from yaie.sampling import Sampler, SamplingMetadata
from yaie.sampling.metadata import mix_seed, seeded_uniform
from yaie.sampling.sampler import inverse_cdf_sample, top_p_cutoffs
from yaie.types import Request, SamplingParams

CPU = torch.device("cpu")
EOS_ID = 0


def sampling_request(
    params: SamplingParams,
    prompt_token_ids: Sequence[int] = (1, 2, 3),
    output_token_ids: Sequence[int] = (),
    sample_index: int = 0,
    request_id: str = "r",
) -> Request:
    request = Request(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        sampling_params=params,
        eos_token_ids=frozenset({EOS_ID}),
        sample_index=sample_index,
    )
    for token_id in output_token_ids:
        request.append_output_token(token_id)
    return request


def sample(
    logits: torch.Tensor, requests: Sequence[Request], sampler: Sampler | None = None
) -> tuple[list[int], SamplingMetadata, Sampler]:
    sampler = sampler or Sampler(seed=0)
    metadata = SamplingMetadata.from_requests(requests, logits.shape[1], CPU)
    output = sampler(logits.clone(), metadata)
    assert output.token_ids.dtype == torch.int64 and output.token_ids.shape == (len(requests),)
    return output.token_ids.tolist(), metadata, sampler


def row_logits(values: Sequence[float], num_rows: int = 1) -> torch.Tensor:
    return torch.tensor([list(values)] * num_rows, dtype=torch.float32)  # [num_rows, V]


def log_probs_logits(probs: Sequence[float], num_rows: int = 1) -> torch.Tensor:
    return row_logits([math.log(p) for p in probs], num_rows)


GREEDY = SamplingParams(temperature=0.0)


# --- greedy -------------------------------------------------------------------------------------------------


def test_all_greedy_batch_is_argmax_and_builds_nothing() -> None:
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(1))
    token_ids, metadata, _ = sample(logits, [sampling_request(GREEDY) for _ in range(8)])
    assert token_ids == torch.argmax(logits, dim=-1).tolist()
    assert metadata.is_plain_greedy
    assert metadata.top_k_rows is None and metadata.full_vocab_rows is None
    assert metadata.edits.is_empty and metadata.logprob_row_ids is None


def test_greedy_ties_take_the_first_index() -> None:
    token_ids, _, _ = sample(row_logits([0.0, 5.0, 1.0, 5.0]), [sampling_request(GREEDY)])
    assert token_ids == [1]


def test_greedy_rows_beside_random_rows() -> None:
    logits = torch.zeros(4, 50)  # flat: a random row could pick anything
    logits[:, 7] = 0.5  # the greedy choice, barely preferred
    requests = [sampling_request(GREEDY), sampling_request(SamplingParams(temperature=1.0))] * 2
    sampler = Sampler(seed=0)
    random_choices: set[int] = set()
    for _ in range(10):
        token_ids, _, _ = sample(logits, requests, sampler)
        assert token_ids[0] == token_ids[2] == 7
        random_choices.update((token_ids[1], token_ids[3]))
    assert len(random_choices) > 5


def test_top_k_one_equals_greedy() -> None:
    logits = torch.randn(16, 200, generator=torch.Generator().manual_seed(2))
    requests = [sampling_request(SamplingParams(temperature=1.5, top_k=1)) for _ in range(16)]
    sampler = Sampler(seed=3)
    for _ in range(5):
        assert sample(logits, requests, sampler)[0] == torch.argmax(logits, dim=-1).tolist()


def test_tiny_top_p_equals_greedy() -> None:
    logits = torch.randn(16, 200, generator=torch.Generator().manual_seed(4))
    requests = [sampling_request(SamplingParams(temperature=1.5, top_p=1e-6)) for _ in range(16)]
    sampler = Sampler(seed=5)
    for _ in range(5):
        assert sample(logits, requests, sampler)[0] == torch.argmax(logits, dim=-1).tolist()


def draw_support(probs: Sequence[float], params: SamplingParams, num_rows: int = 400) -> Counter[int]:
    requests = [sampling_request(params) for _ in range(num_rows)]
    return Counter(sample(log_probs_logits(probs, num_rows), requests)[0])


PROBS_4 = (0.5, 0.3, 0.15, 0.05)


@pytest.mark.parametrize(
    ("top_p", "support"), [(0.45, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_smallest_nucleus(top_p: float, support: set[int]) -> None:
    assert set(draw_support(PROBS_4, SamplingParams(top_p=top_p), num_rows=2000)) == support


def test_greedy_top_k_and_full_vocabulary_rows_mixed_in_one_batch() -> None:
    kinds = [SamplingParams(top_k=2), SamplingParams(top_p=0.45), SamplingParams(), SamplingParams(top_k=0)]
    kinds += [GREEDY, SamplingParams(top_k=3)]
    requests = [sampling_request(kinds[i % len(kinds)]) for i in range(3000)]
    token_ids, _, _ = sample(log_probs_logits(PROBS_4, 3000), requests)
    supports = [set(token_ids[kind :: len(kinds)]) for kind in range(len(kinds))]
    assert supports == [{0, 1}, {0}, {0, 1, 2, 3}, {0, 1, 2, 3}, {0}, {0, 1, 2}]


def test_min_p_drops_tokens_below_the_scaled_maximum() -> None:
    assert set(draw_support(PROBS_4, SamplingParams(min_p=0.5), num_rows=1000)) == {0, 1}  # 0.3 >= 0.25
    assert set(draw_support(PROBS_4, SamplingParams(min_p=0.2), num_rows=2000)) == {0, 1, 2}  # 0.15 >= 0.1


def test_min_p_applies_to_the_tempered_distribution_and_combines_with_top_k() -> None:
    # temperature 0.5 squares the ratios: 0.3 / 0.5 = 0.6 becomes 0.36, below min_p = 0.4
    assert set(draw_support(PROBS_4, SamplingParams(temperature=0.5, min_p=0.4), num_rows=1000)) == {0}
    combined = SamplingParams(top_k=3, min_p=0.25)  # top-k keeps {0, 1, 2}; 0.15 >= 0.25 * 0.5 keeps 2
    assert set(draw_support(PROBS_4, combined, num_rows=2000)) == {0, 1, 2}
    assert set(draw_support(PROBS_4, SamplingParams(top_k=3, min_p=0.35), num_rows=1000)) == {0, 1}


def reference_kept_ids(row: torch.Tensor, top_k: int | None, top_p: float) -> set[int]:
    """Top-k then top-p by a plain full sort, one row at a time."""
    values, ids = row.sort(descending=True)
    if top_k is not None:
        values, ids = values[:top_k], ids[:top_k]
    masses = values.softmax(dim=-1).tolist()
    kept: set[int] = set()
    mass_before = 0.0
    for token_id, mass in zip(ids.tolist(), masses, strict=True):
        if mass_before >= top_p:
            break
        kept.add(token_id)
        mass_before += mass
    return kept


@pytest.mark.parametrize("num_candidates", [2, 256])
def test_top_p_cutoffs_match_a_full_sort_reference(num_candidates: int) -> None:
    vocab_size = 600
    scale = torch.tensor([[0.05], [0.5], [3.0], [1.0], [0.2]])  # flat rows have wide nuclei
    logits = torch.randn(5, vocab_size, generator=torch.Generator().manual_seed(9)) * scale  # [5, V]
    top_p = [0.9, 0.8, 0.3, 1.0, 0.95]
    probs = logits.softmax(dim=-1)
    cutoffs = top_p_cutoffs(probs, torch.tensor(top_p), num_candidates=num_candidates)
    for row, p in enumerate(top_p):
        kept = set((probs[row] >= cutoffs[row]).nonzero().squeeze(1).tolist())
        assert kept == reference_kept_ids(logits[row], None, p), f"row {row}"
    assert len(reference_kept_ids(logits[0], None, 0.9)) > 256  # the candidate fallback was exercised


@pytest.mark.parametrize(("top_k", "top_p"), [(40, 0.8), (40, 1.0), (7, 0.5), (250, 0.9)])
def test_top_k_rows_sample_exactly_the_top_k_then_top_p_set(top_k: int, top_p: float) -> None:
    row = torch.randn(300, generator=torch.Generator().manual_seed(10)) * 0.5  # [V]
    num_rows = 6000
    requests = [sampling_request(SamplingParams(top_k=top_k, top_p=top_p)) for _ in range(num_rows)]
    token_ids, metadata, _ = sample(row.expand(num_rows, -1).contiguous(), requests)
    assert metadata.top_k_rows is not None and metadata.full_vocab_rows is None
    assert set(token_ids) == reference_kept_ids(row, top_k, top_p)


def test_top_k_renormalises_before_top_p() -> None:
    # after top-k = 2 the masses are (0.625, 0.375): a 0.6 nucleus is token 0 alone; without top-k it is {0, 1}
    assert set(draw_support(PROBS_4, SamplingParams(top_k=2, top_p=0.6), num_rows=2000)) == {0}
    assert set(draw_support(PROBS_4, SamplingParams(top_p=0.6), num_rows=2000)) == {0, 1}


def test_inverse_cdf_never_picks_a_zero_probability_token() -> None:
    probs = torch.tensor([[0.0, 0.0, 0.3, 0.7, 0.0, 0.0]] * 3)
    uniforms = torch.tensor([0.0, 1.0 - 2.0**-24, 0.5])
    assert inverse_cdf_sample(probs.clone(), uniforms).tolist() == [2, 3, 3]
    assert inverse_cdf_sample(probs.clone(), torch.tensor([0.29, 0.31, 0.99])).tolist() == [2, 3, 3]


# --- logit processing ----------------------------------------------------------------------------------------


def processed_logprobs(logits: torch.Tensor, request: Request) -> list[float]:
    """The full log-distribution the sampler reports for one row: recover it from top-V logprobs."""
    vocab_size = logits.shape[1]
    params = request.sampling_params
    probe = sampling_request(
        SamplingParams(
            temperature=0.0,
            logprobs=min(vocab_size, 20),
            repetition_penalty=params.repetition_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            logit_bias=params.logit_bias,
            min_tokens=params.min_tokens,
        ),
        prompt_token_ids=request.prompt_token_ids,
        output_token_ids=request.output_token_ids,
    )
    metadata = SamplingMetadata.from_requests([probe], vocab_size, CPU)
    logprob = Sampler()(logits.clone(), metadata).logprobs[0]
    assert logprob is not None
    by_id = dict(logprob.top_logprobs)
    return [by_id[token_id] for token_id in range(vocab_size)]


def expect_logprobs(expected_logits: Sequence[float]) -> list[float]:
    return torch.log_softmax(torch.tensor(expected_logits), dim=-1).tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = row_logits([2.0, 1.8, -1.0, -1.0, 0.5, 0.0])
    request = sampling_request(
        SamplingParams(temperature=0.0, repetition_penalty=2.0), (0, 2), output_token_ids=(4,)
    )
    assert sample(logits, [request])[0] == [1]  # token 0 (2.0 -> 1.0) was in the prompt
    assert processed_logprobs(logits, request) == pytest.approx(
        expect_logprobs([1.0, 1.8, -2.0, -1.0, 0.25, 0.0])
    )


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    logits = row_logits([3.0, 2.9, 2.0, 1.0])
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.25)
    request = sampling_request(params, prompt_token_ids=(1, 1, 1), output_token_ids=(0, 0, 2))
    # token 0: 3.0 - 2 * 0.5 - 0.25 = 1.75; token 2: 2.0 - 0.5 - 0.25 = 1.25; prompt token 1 untouched
    assert sample(logits, [request])[0] == [1]
    assert processed_logprobs(logits, request) == pytest.approx(expect_logprobs([1.75, 2.9, 1.25, 1.0]))
    encouraging = SamplingParams(temperature=0.0, frequency_penalty=-1.0)  # 1.0 + 3 * 1.0 beats 3.0
    assert sample(logits, [sampling_request(encouraging, output_token_ids=(3, 3, 3))])[0] == [3]


def test_logit_bias_forces_a_token_for_greedy_and_random_rows() -> None:
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(6))
    bias = {42: 100.0}
    requests = [
        sampling_request(SamplingParams(temperature=0.0, logit_bias=bias)),
        sampling_request(SamplingParams(temperature=1.0, logit_bias=bias)),
        sampling_request(SamplingParams(temperature=1.0, logit_bias={int(torch.argmax(logits[2])): -100.0})),
        sampling_request(GREEDY),
    ]
    token_ids, _, _ = sample(logits, requests)
    assert token_ids[:2] == [42, 42]
    assert token_ids[2] != int(torch.argmax(logits[2]))
    assert token_ids[3] == int(torch.argmax(logits[3]))


def test_logit_bias_outside_the_vocabulary_is_rejected() -> None:
    request = sampling_request(SamplingParams(logit_bias={100: 1.0}))
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingMetadata.from_requests([request], 100, CPU)


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached() -> None:
    logits = row_logits([5.0, 4.0, 3.0, 1.0])  # EOS (0) then stop token 1 are the most likely
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(1,))
    assert sample(logits, [sampling_request(params)])[0] == [2]
    assert sample(logits, [sampling_request(params, output_token_ids=(3,))])[0] == [2]
    assert sample(logits, [sampling_request(params, output_token_ids=(3, 3))])[0] == [0]
    ignoring_eos = SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True)
    assert sample(logits, [sampling_request(ignoring_eos)])[0] == [0]  # EOS does not stop it, so not masked


# --- seeds ---------------------------------------------------------------------------------------------------

FLAT_VOCAB = 5000
NEAR_FLAT_ROW = torch.randn(FLAT_VOCAB, generator=torch.Generator().manual_seed(11)) * 0.1  # [V]


def near_flat_logits(num_rows: int) -> torch.Tensor:
    return NEAR_FLAT_ROW.expand(num_rows, -1).contiguous()  # [num_rows, V]


def seeded_draws(request: Request, position: int, batch: Sequence[Request], sampler: Sampler) -> int:
    """The token `request` draws when placed at `position` of `batch` (near-flat logits: draws vary)."""
    requests = list(batch)
    requests.insert(position, request)
    token_ids, _, _ = sample(near_flat_logits(len(requests)), requests, sampler)
    return token_ids[position]


@pytest.mark.parametrize("top_k", [None, 2000])
def test_seeded_row_is_reproducible_alone_in_any_batch_and_at_any_sampler_state(top_k: int | None) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.95, top_k=top_k, seed=1234)
    others = [
        sampling_request(SamplingParams(temperature=1.0)),
        sampling_request(SamplingParams(seed=7, top_k=4000)),
        sampling_request(GREEDY),
    ]
    for num_output_tokens in range(4):
        output = [5] * num_output_tokens
        alone = seeded_draws(sampling_request(params, output_token_ids=output), 0, [], Sampler(seed=0))
        busy_sampler = Sampler(seed=99)
        for _ in range(3):  # advance the shared generator
            seeded_draws(sampling_request(SamplingParams()), 0, others, busy_sampler)
        batched = seeded_draws(sampling_request(params, output_token_ids=output), 1, others, busy_sampler)
        assert alone == batched


def test_seeded_row_draws_differ_across_steps_and_seeds() -> None:
    def draw(seed: int, num_output_tokens: int) -> int:
        request = sampling_request(SamplingParams(seed=seed), output_token_ids=[5] * num_output_tokens)
        return seeded_draws(request, 0, [], Sampler())

    assert len({draw(1, step) for step in range(8)}) > 4
    assert len({draw(seed, 0) for seed in range(8)}) > 4


def test_n_siblings_with_one_seed_differ_but_each_reproduces() -> None:
    params = SamplingParams(n=4, seed=42)
    siblings = [sampling_request(params, sample_index=i, request_id=f"r-{i}") for i in range(4)]
    first, _, _ = sample(near_flat_logits(4), siblings, Sampler(seed=0))
    again, _, _ = sample(near_flat_logits(4), siblings[::-1], Sampler(seed=1))
    assert len(set(first)) == 4
    assert first == again[::-1]


def test_seeded_uniforms_are_pure_functions_of_seed_index_and_step() -> None:
    uniforms = [seeded_uniform(7, index, step) for index in range(4) for step in range(250)]
    assert all(0.0 <= u < 1.0 for u in uniforms) and len(set(uniforms)) == len(uniforms)
    assert abs(sum(uniforms) / len(uniforms) - 0.5) < 0.05
    assert seeded_uniform(7, 1, 3) == seeded_uniform(7, 1, 3)
    assert len({mix_seed(42, 0, 0), mix_seed(43, 0, 0), mix_seed(42, 1, 0), mix_seed(42, 0, 1)}) == 4
    assert 0 <= mix_seed(-5, 3, 10**6) < 2**64


# --- logprobs ------------------------------------------------------------------------------------------------


def test_logprobs_are_log_softmax_before_temperature_with_ranks() -> None:
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(8))
    requests = [
        sampling_request(SamplingParams(temperature=0.5, logprobs=5)),
        sampling_request(SamplingParams(temperature=0.0)),
        sampling_request(SamplingParams(temperature=0.0, logprobs=0)),
    ]
    metadata = SamplingMetadata.from_requests(requests, 64, CPU)
    output = Sampler(seed=0)(logits.clone(), metadata)
    expected = torch.log_softmax(logits, dim=-1)  # [3, 64]
    assert output.logprobs[1] is None
    for row in (0, 2):
        logprob = output.logprobs[row]
        assert logprob is not None
        token_id = int(output.token_ids[row])
        assert logprob.token_id == token_id
        assert logprob.logprob == pytest.approx(float(expected[row, token_id]), abs=1e-6)
        assert logprob.rank == int((expected[row] > expected[row, token_id]).sum()) + 1
    assert output.logprobs[2] is not None and output.logprobs[2].rank == 1
    assert output.logprobs[2].top_logprobs == ()
    top = output.logprobs[0].top_logprobs
    best = expected[0].topk(5)
    assert [t for t, _ in top] == best.indices.tolist()
    assert [lp for _, lp in top] == pytest.approx(best.values.tolist(), abs=1e-6)


def test_logprob_rank_of_an_unlikely_sampled_token() -> None:
    logits = row_logits([4.0, 3.0, 2.0, 1.0])
    request = sampling_request(SamplingParams(temperature=1.0, logprobs=1))
    metadata = SamplingMetadata.from_requests([request], 4, CPU)
    ranks_by_token: dict[int, int] = {}
    sampler = Sampler(seed=0)
    for _ in range(200):
        output = sampler(logits.clone(), metadata)
        logprob = output.logprobs[0]
        assert logprob is not None
        ranks_by_token[logprob.token_id] = logprob.rank
    assert ranks_by_token == {0: 1, 1: 2, 2: 3, 3: 4}


# --- distribution --------------------------------------------------------------------------------------------

CHI2_P999 = {2: 13.82, 3: 16.27}  # chi-square critical values at p = 0.001, by degrees of freedom


def assert_follows(counts: Counter[int], expected_probs: Sequence[float]) -> None:
    """Zero-probability tokens never drawn; the others pass a chi-square test at p = 0.001."""
    total = sum(counts.values())
    support = [i for i, p in enumerate(expected_probs) if p > 0]
    assert set(counts) <= set(support)
    statistic = sum(
        (counts[i] - total * expected_probs[i]) ** 2 / (total * expected_probs[i]) for i in support
    )
    assert statistic < CHI2_P999[len(support) - 1]


def tempered(probs: Sequence[float], temperature: float, top_k: int | None = None) -> list[float]:
    """The distribution to sample from: probs ** (1 / T), the top_k most likely kept, renormalised."""
    powered = [p ** (1 / temperature) for p in probs]
    if top_k is not None:
        kth = sorted(powered, reverse=True)[top_k - 1]
        powered = [p if p >= kth else 0.0 for p in powered]
    return [p / sum(powered) for p in powered]


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_sampling_matches_the_tempered_distribution(
    temperature: float, top_k: int | None
) -> None:
    probs = (0.1, 0.2, 0.3, 0.4)
    counts = draw_support(probs, SamplingParams(temperature=temperature, top_k=top_k), num_rows=20000)
    assert_follows(counts, tempered(probs, temperature, top_k))


@pytest.mark.parametrize("top_k", [None, 3])
def test_seeded_rows_follow_the_distribution(top_k: int | None) -> None:
    probs = (0.1, 0.2, 0.3, 0.4)
    requests = [sampling_request(SamplingParams(seed=seed, top_k=top_k)) for seed in range(4000)]
    counts = Counter(sample(log_probs_logits(probs, 4000), requests)[0])
    assert_follows(counts, tempered(probs, 1.0, top_k))


# --- validation ----------------------------------------------------------------------------------------------


def test_metadata_neutralises_off_settings() -> None:
    requests = [sampling_request(SamplingParams(top_k=0)), sampling_request(SamplingParams(top_k=1000))]
    metadata = SamplingMetadata.from_requests(requests, 50, CPU)
    rows = metadata.full_vocab_rows
    assert metadata.top_k_rows is None and rows is not None and rows.row_ids is None
    assert rows.top_k is None and rows.top_p is None and rows.min_p is None and rows.temperature is None


def test_bad_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="requests"):
        SamplingMetadata.from_requests([], 10, CPU)
    metadata = SamplingMetadata.from_requests([sampling_request(GREEDY)], 10, CPU)
    with pytest.raises(ValueError, match="logits"):
        Sampler()(torch.zeros(2, 10), metadata)
