"""Batched sampling parameters: one row per request that needs a sample this step.

`SamplingMetadata.from_requests` is built once per step by the runner. It builds only what the batch uses:
a field is None when no row needs that stage, so an all-greedy batch without penalties, bias or logprobs
carries nothing but `all_greedy=True` and the sampler reduces to one argmax.

Random rows fall in two groups, chosen by each row's own settings: rows with top-k are sampled among their k
most likely tokens only; the others over the whole vocabulary. Either way the token is drawn by inverse CDF
from one uniform number per row. A seeded row's uniform is derived statelessly from
(seed, sample_index, num_output_tokens) by a 64-bit hash, with no generator state: the same seed yields the
same tokens alone, in any batch, on any device and after preemption (recompute keeps the counters), while the
n samples of one prompt (different sample_index) still differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from yaie.sampling.allowed_tokens import AllowedTokens
from yaie.sampling.penalties import LogitEdits, build_logit_edits
from yaie.types import Request, SamplingParams

_MASK_64 = (1 << 64) - 1


@dataclass(frozen=True)
class RandomRows:
    """A group of random (temperature > 0) rows sampled the same way; their settings gathered as [R] tensors.

    `row_ids` [R] are the group's rows in the batch; None when the group is the whole batch, in order.
    `temperature` is None when every row's is 1.0. `top_k` [R] is set (every k < V, `max_top_k` the largest)
    only for the top-k group. `top_p` (1.0 = off) and `min_p` (0.0 = off) are None when no row uses them.
    `seeded_positions` [S] index the group's seeded rows, which use `seeded_uniforms` [S] in [0, 1) instead
    of the sampler's generator.
    """

    num_rows: int
    row_ids: torch.Tensor | None  # [R] int64
    temperature: torch.Tensor | None  # [R] float32
    top_k: torch.Tensor | None  # [R] int64
    max_top_k: int
    top_p: torch.Tensor | None  # [R] float32
    min_p: torch.Tensor | None  # [R] float32
    seeded_positions: torch.Tensor | None  # [S] int64
    seeded_uniforms: torch.Tensor | None  # [S] float32


@dataclass(frozen=True)
class SamplingMetadata:
    """Everything the sampler needs for one step, N rows (one per request that samples), tensors on `device`.

    Greedy rows are the argmax; `top_k_rows` and `full_vocab_rows` are the random groups (None when empty).
    `logprob_row_ids` are the rows that asked for logprobs, `num_logprobs` how many alternatives each wants.
    """

    num_rows: int
    all_greedy: bool
    any_greedy: bool
    top_k_rows: RandomRows | None
    full_vocab_rows: RandomRows | None
    edits: LogitEdits
    logprob_row_ids: torch.Tensor | None  # [L] int64
    num_logprobs: tuple[int, ...]  # [L]
    max_num_logprobs: int | None
    allowed_tokens: AllowedTokens | None = None  # grammar masks of constrained rows (None: none is)

    @property
    def is_plain_greedy(self) -> bool:
        """True when the whole batch is an argmax of the raw logits."""
        return self.all_greedy and self.edits.is_empty and self.logprob_row_ids is None

    @classmethod
    def from_requests(
        cls, requests: Sequence[Request], vocab_size: int, device: torch.device,
        allowed_tokens: AllowedTokens | None = None,
    ) -> SamplingMetadata:
        """Batch the sampling settings of `requests`, one row each, in order (`allowed_tokens`: the
        grammar masks of the constrained rows, see yaie.sampling.allowed_tokens)."""
        if not requests:
            raise ValueError("requests must not be empty")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        params = [request.sampling_params for request in requests]
        has_top_k = [_top_k(p, vocab_size) is not None for p in params]
        top_k_rows = [row for row, flag in enumerate(has_top_k) if flag]
        full_vocab_rows = [row for row, p in enumerate(params) if not p.is_greedy and not has_top_k[row]]
        num_greedy = len(params) - len(top_k_rows) - len(full_vocab_rows)
        logprob_rows = [row for row, p in enumerate(params) if p.logprobs is not None]
        num_logprobs = tuple(params[row].logprobs or 0 for row in logprob_rows)
        return cls(
            num_rows=len(params),
            all_greedy=num_greedy == len(params),
            any_greedy=num_greedy > 0,
            top_k_rows=_build_random_rows(requests, top_k_rows, vocab_size, device),
            full_vocab_rows=_build_random_rows(requests, full_vocab_rows, vocab_size, device),
            edits=build_logit_edits(requests, vocab_size, device),
            logprob_row_ids=_int_tensor(logprob_rows, device) if logprob_rows else None,
            num_logprobs=num_logprobs,
            max_num_logprobs=max(num_logprobs) if num_logprobs else None,
            allowed_tokens=allowed_tokens,
        )


def seeded_uniform(seed: int, sample_index: int, step: int) -> float:
    """A uniform number in [0, 1) with 24 random bits (float32's resolution), a pure function of its inputs."""
    return (mix_seed(seed, sample_index, step) >> 40) * 2.0**-24


def mix_seed(seed: int, sample_index: int, step: int) -> int:
    """A 64-bit hash of (request seed, sample index, output position): splitmix64, chained."""
    state = _splitmix64(seed & _MASK_64)
    state = _splitmix64(state ^ (sample_index & _MASK_64))
    return _splitmix64(state ^ (step & _MASK_64))


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK_64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return value ^ (value >> 31)


def _top_k(params: SamplingParams, vocab_size: int) -> int | None:
    """The row's effective top-k: None when greedy, off (None / 0) or not below the vocabulary size."""
    if params.is_greedy or not params.top_k or params.top_k >= vocab_size:
        return None
    return params.top_k


def _build_random_rows(
    requests: Sequence[Request], row_ids: list[int], vocab_size: int, device: torch.device
) -> RandomRows | None:
    if not row_ids:
        return None
    params = [requests[row].sampling_params for row in row_ids]
    top_k = [_top_k(p, vocab_size) or vocab_size for p in params]
    seeded_positions: list[int] = []
    seeded_uniforms: list[float] = []
    for position, row in enumerate(row_ids):
        request = requests[row]
        seed = request.sampling_params.seed
        if seed is not None:
            seeded_positions.append(position)
            seeded_uniforms.append(seeded_uniform(seed, request.sample_index, request.num_output_tokens))
    return RandomRows(
        num_rows=len(row_ids),
        row_ids=None if row_ids == list(range(len(requests))) else _int_tensor(row_ids, device),
        temperature=_unless_all_neutral([p.temperature for p in params], 1.0, torch.float32, device),
        top_k=_unless_all_neutral(top_k, vocab_size, torch.int64, device),
        max_top_k=max((k for k in top_k if k < vocab_size), default=0),
        top_p=_unless_all_neutral([p.top_p for p in params], 1.0, torch.float32, device),
        min_p=_unless_all_neutral([p.min_p for p in params], 0.0, torch.float32, device),
        seeded_positions=_int_tensor(seeded_positions, device) if seeded_positions else None,
        seeded_uniforms=_float_tensor(seeded_uniforms, device) if seeded_positions else None,
    )


def _unless_all_neutral(
    values: list[float] | list[int], neutral: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """The values as a tensor, or None when all are `neutral` (the stage is off for the whole group)."""
    if all(value == neutral for value in values):
        return None
    return torch.tensor(values, dtype=dtype, device=device)


def _int_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def _float_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)
