"""Batched sampling parameters: one row per request that needs a sample this step.

`SamplingMetadata.from_requests` is built once per step by the runner. It builds only what the batch uses:
a field is None when no row needs that stage, so an all-greedy batch without penalties, bias or logprobs
carries nothing but `all_greedy=True` and the sampler reduces to one argmax.

Seeded rows get a fresh generator per step, derived statelessly from (seed, sample_index, num_output_tokens):
the same seed yields the same tokens alone, in any batch and after preemption (recompute keeps the counters),
while the n samples of one prompt (different sample_index) still differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from yaie.sampling.penalties import LogitEdits, build_logit_edits
from yaie.types import Request, SamplingParams

_MASK_64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingMetadata:
    """Per-row sampling settings as tensors [N] on the logits' device.

    `temperature` is None when every row is greedy; greedy rows hold 1.0 there (their sample is replaced by
    the argmax, see `greedy_mask`, which is set only when some but not all rows are greedy).
    `top_k` holds V on rows without top-k, `top_p` 1.0, `min_p` 0.0; each is None when no random row uses it.
    `seeded_row_ids[i]` samples with `generators[i]`; other random rows share the sampler's generator.
    `logprob_row_ids` are the rows that asked for logprobs, `num_logprobs` how many alternatives each wants.
    """

    num_rows: int
    all_greedy: bool
    any_greedy: bool
    temperature: torch.Tensor | None  # [N] float32
    greedy_mask: torch.Tensor | None  # [N] bool
    top_k: torch.Tensor | None  # [N] int64
    max_top_k: int
    top_p: torch.Tensor | None  # [N] float32
    min_p: torch.Tensor | None  # [N] float32
    edits: LogitEdits
    seeded_row_ids: tuple[int, ...]
    generators: tuple[torch.Generator, ...]
    logprob_row_ids: torch.Tensor | None  # [L] int64
    num_logprobs: tuple[int, ...]  # [L]
    max_num_logprobs: int | None

    @property
    def is_plain_greedy(self) -> bool:
        """True when the whole batch is an argmax of the raw logits."""
        return self.all_greedy and self.edits.is_empty and self.logprob_row_ids is None

    @classmethod
    def from_requests(
        cls, requests: Sequence[Request], vocab_size: int, device: torch.device
    ) -> SamplingMetadata:
        """Batch the sampling settings of `requests`, one row each, in order."""
        if not requests:
            raise ValueError("requests must not be empty")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        params = [request.sampling_params for request in requests]
        num_greedy = sum(p.is_greedy for p in params)
        all_greedy = num_greedy == len(params)
        logprob_rows = [row for row, p in enumerate(params) if p.logprobs is not None]
        logprob_row_ids = (
            torch.tensor(logprob_rows, dtype=torch.int64, device=device) if logprob_rows else None
        )
        num_logprobs = tuple(params[row].logprobs or 0 for row in logprob_rows)
        random_fields = _RandomFields() if all_greedy else _build_random_fields(params, vocab_size, device)
        seeded_row_ids, generators = _build_generators(requests, device)
        return cls(
            num_rows=len(params),
            all_greedy=all_greedy,
            any_greedy=num_greedy > 0,
            temperature=random_fields.temperature,
            greedy_mask=random_fields.greedy_mask,
            top_k=random_fields.top_k,
            max_top_k=random_fields.max_top_k or vocab_size,
            top_p=random_fields.top_p,
            min_p=random_fields.min_p,
            edits=build_logit_edits(requests, vocab_size, device),
            seeded_row_ids=seeded_row_ids,
            generators=generators,
            logprob_row_ids=logprob_row_ids,
            num_logprobs=num_logprobs,
            max_num_logprobs=max(num_logprobs) if num_logprobs else None,
        )


def mix_seed(seed: int, sample_index: int, step: int) -> int:
    """A 64-bit generator seed from (request seed, sample index, output position); splitmix64 chained."""
    state = _splitmix64(seed & _MASK_64)
    state = _splitmix64(state ^ (sample_index & _MASK_64))
    return _splitmix64(state ^ (step & _MASK_64))


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK_64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return value ^ (value >> 31)


@dataclass(frozen=True)
class _RandomFields:
    """The tensors only random (temperature > 0) rows use; all None for an all-greedy batch."""

    temperature: torch.Tensor | None = None
    greedy_mask: torch.Tensor | None = None
    top_k: torch.Tensor | None = None
    max_top_k: int | None = None
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None


def _build_random_fields(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> _RandomFields:
    """Greedy rows are neutral in every field (their token is the argmax whatever these hold)."""
    temperature: list[float] = []
    top_k: list[int] = []
    top_p: list[float] = []
    min_p: list[float] = []
    for p in params:
        temperature.append(1.0 if p.is_greedy else p.temperature)
        top_k.append(vocab_size if p.is_greedy or not p.top_k else min(p.top_k, vocab_size))
        top_p.append(1.0 if p.is_greedy else p.top_p)
        min_p.append(0.0 if p.is_greedy else p.min_p)
    is_greedy = [p.is_greedy for p in params]
    uses_top_k = any(k < vocab_size for k in top_k)
    return _RandomFields(
        temperature=_float_tensor(temperature, device),
        greedy_mask=torch.tensor(is_greedy, dtype=torch.bool, device=device) if any(is_greedy) else None,
        top_k=torch.tensor(top_k, dtype=torch.int64, device=device) if uses_top_k else None,
        max_top_k=max(top_k) if uses_top_k else None,
        top_p=_float_tensor(top_p, device) if any(p < 1.0 for p in top_p) else None,
        min_p=_float_tensor(min_p, device) if any(p > 0.0 for p in min_p) else None,
    )


def _build_generators(
    requests: Sequence[Request], device: torch.device
) -> tuple[tuple[int, ...], tuple[torch.Generator, ...]]:
    """One generator per seeded random row, seeded from (seed, sample_index, num_output_tokens)."""
    row_ids: list[int] = []
    generators: list[torch.Generator] = []
    for row, request in enumerate(requests):
        params = request.sampling_params
        if params.seed is None or params.is_greedy:
            continue
        generator = torch.Generator(device=device)
        generator.manual_seed(mix_seed(params.seed, request.sample_index, request.num_output_tokens))
        row_ids.append(row)
        generators.append(generator)
    return tuple(row_ids), tuple(generators)


def _float_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)
