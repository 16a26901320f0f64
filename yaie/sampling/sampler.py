"""The batched sampler: logits [N, V] -> one token per row (and logprobs for the rows that asked).

Stages, each skipped when no row of the batch needs it:
  1. logit bias -> min_tokens masking -> repetition / frequency / presence penalties  (sparse edits)
  2. logprobs: log_softmax of the logits after stage 1, before temperature and top-k/top-p/min-p. This matches
     vLLM's default "raw processed" logprobs: they describe the model's (penalised) distribution, not the
     truncated one a token was drawn from, so they stay comparable across sampling settings.
  3. greedy rows: argmax of the stage-1 logits (exactly torch.argmax of the raw logits without edits; ties
     go to the first index)
  4. random rows: temperature -> top-k -> top-p -> min-p -> exponential race argmax(p / Exp(1)), which draws
     from p. Seeded rows draw their noise from their own generator, so their draw does not depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yaie.sampling.metadata import SamplingMetadata
from yaie.sampling.penalties import apply_logit_edits
from yaie.types import TokenLogprob

_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: torch.Tensor  # [N] int64
    logprobs: list[TokenLogprob | None]  # [N]; set only on rows whose request asked for logprobs


class Sampler:
    """Samples one token per row. `logits` is consumed: the sampler may write into it.

    Unseeded random rows share one generator seeded with `seed`, so a run is reproducible as a whole.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """logits: [N, V] float32, row i belonging to the i-th request of `metadata`."""
        if logits.dim() != 2 or logits.shape[0] != metadata.num_rows:
            raise ValueError(f"logits must be [{metadata.num_rows}, V], got {list(logits.shape)}")
        if metadata.is_plain_greedy:
            return SamplerOutput(token_ids=logits.argmax(dim=-1), logprobs=[None] * metadata.num_rows)
        if logits.dtype != torch.float32:
            logits = logits.float()
        logits = apply_logit_edits(logits, metadata.edits)
        row_logprobs = None
        if metadata.logprob_row_ids is not None:
            row_logprobs = torch.log_softmax(logits[metadata.logprob_row_ids], dim=-1)  # [L, V]
        token_ids = self._sample(logits, metadata)
        return SamplerOutput(
            token_ids=token_ids, logprobs=_collect_logprobs(row_logprobs, token_ids, metadata)
        )

    def _sample(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        if metadata.all_greedy:
            return logits.argmax(dim=-1)
        greedy_ids = logits.argmax(dim=-1) if metadata.any_greedy else None  # [N]
        assert metadata.temperature is not None
        logits.div_(metadata.temperature.unsqueeze(1))
        logits = apply_top_k_top_p(logits, metadata.top_k, metadata.top_p, metadata.max_top_k)
        probs = logits.softmax(dim=-1)  # [N, V]
        if metadata.min_p is not None:
            apply_min_p(probs, metadata.min_p)
        random_ids = self._exponential_race(probs, metadata)
        if greedy_ids is None:
            return random_ids
        assert metadata.greedy_mask is not None
        return torch.where(metadata.greedy_mask, greedy_ids, random_ids)

    def _exponential_race(self, probs: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """argmax(p / q) with q ~ Exp(1) i.i.d. picks token i with probability p_i (p need not sum to 1)."""
        noise = torch.empty_like(probs)  # [N, V]
        if len(metadata.seeded_row_ids) < metadata.num_rows:
            noise.exponential_(generator=self._generator_on(probs.device))
        for row, generator in zip(metadata.seeded_row_ids, metadata.generators, strict=True):
            noise[row].exponential_(generator=generator)
        return probs.div_(noise.clamp_min_(_TINY)).argmax(dim=-1)

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._seed)
        return self._generator


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None, max_top_k: int
) -> torch.Tensor:
    """Set to -inf the logits [N, V] outside each row's top-k, then outside its top-p nucleus.

    top_k [N] (V = off), top_p [N] (1.0 = off). The nucleus is the smallest set of most likely tokens whose
    mass reaches top_p; the most likely token is always kept. Ties at the k-th value are all kept.
    """
    if top_k is None and top_p is None:
        return logits
    if top_p is None:
        assert top_k is not None
        top_values = logits.topk(max_top_k, dim=-1).values  # [N, max_top_k], descending
        kth_values = top_values.gather(1, (top_k.clamp(max=max_top_k) - 1).unsqueeze(1))  # [N, 1]
        return logits.masked_fill_(logits < kth_values, float("-inf"))
    sorted_logits, sorted_ids = logits.sort(dim=-1)  # ascending: [N, V]
    if top_k is not None:
        kth_values = sorted_logits.gather(1, (logits.shape[1] - top_k).unsqueeze(1))  # [N, 1]
        sorted_logits.masked_fill_(sorted_logits < kth_values, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum_(dim=-1)  # [N, V], mass of tokens up to and incl. each
    outside_nucleus = cumulative <= (1.0 - top_p).unsqueeze(1)
    outside_nucleus[:, -1] = False
    sorted_logits.masked_fill_(outside_nucleus, float("-inf"))
    return logits.scatter_(1, sorted_ids, sorted_logits)


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero, in place, the probs [N, V] below min_p [N] times the row's largest probability (0.0 = off)."""
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)  # [N, 1]
    return probs.masked_fill_(probs < threshold, 0.0)


def _collect_logprobs(
    row_logprobs: torch.Tensor | None, token_ids: torch.Tensor, metadata: SamplingMetadata
) -> list[TokenLogprob | None]:
    """One TokenLogprob per row that asked (rank is 1-based: 1 + number of strictly more likely tokens)."""
    result: list[TokenLogprob | None] = [None] * metadata.num_rows
    if row_logprobs is None or metadata.logprob_row_ids is None:
        return result
    sampled_ids = token_ids[metadata.logprob_row_ids]  # [L]
    sampled_logprobs = row_logprobs.gather(1, sampled_ids.unsqueeze(1))  # [L, 1]
    ranks = (row_logprobs > sampled_logprobs).sum(dim=-1) + 1  # [L]
    top_ids: list[list[int]] = [[] for _ in metadata.num_logprobs]
    top_values: list[list[float]] = [[] for _ in metadata.num_logprobs]
    if metadata.max_num_logprobs:
        top = row_logprobs.topk(metadata.max_num_logprobs, dim=-1)  # [L, K]
        top_ids, top_values = top.indices.tolist(), top.values.tolist()
    rows = metadata.logprob_row_ids.tolist()
    sampled_list, lp_list, rank_list = (
        sampled_ids.tolist(),
        sampled_logprobs.squeeze(1).tolist(),
        ranks.tolist(),
    )
    for i, (row, num_top) in enumerate(zip(rows, metadata.num_logprobs, strict=True)):
        result[row] = TokenLogprob(
            token_id=sampled_list[i],
            logprob=lp_list[i],
            rank=rank_list[i],
            top_logprobs=tuple(zip(top_ids[i][:num_top], top_values[i][:num_top], strict=True)),
        )
    return result
