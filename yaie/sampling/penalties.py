"""Sparse edits of the logits matrix: logit bias, min_tokens masking, repetition / frequency / presence penalties.

Each edit touches only the (row, token) entries it needs, so its cost grows with the number of tokens a row has
seen, never with batch size x vocabulary. `build_*` turn requests into a `SparseLogitEdit` (Python, on the
host, once per step); `apply_logit_edits` applies them on the logits' device in the fixed order
bias -> min_tokens -> repetition -> frequency/presence.

Penalty semantics:
- repetition (HF / vLLM): every token seen in the prompt OR the output has its logit divided by the penalty
  when positive and multiplied by it when negative (penalty > 1 discourages repeats).
- frequency and presence (OpenAI): over OUTPUT tokens only,
  logit -= frequency_penalty * count + presence_penalty * (count > 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from yaie.types import Request


@dataclass(frozen=True)
class SparseLogitEdit:
    """Entries (row_ids[i], token_ids[i]) of an [N, V] logits matrix, each with one value.

    Invariant: the (row, token) pairs are unique and every token id is in [0, V).
    """

    row_ids: torch.Tensor  # [E] int64
    token_ids: torch.Tensor  # [E] int64
    values: torch.Tensor  # [E] float32

    @classmethod
    def from_lists(
        cls, row_ids: list[int], token_ids: list[int], values: list[float], device: torch.device
    ) -> SparseLogitEdit | None:
        """The edit, or None when it has no entries (so the sampler skips it)."""
        if not row_ids:
            return None
        return cls(
            row_ids=_host_to_device(row_ids, np.int64, device),
            token_ids=_host_to_device(token_ids, np.int64, device),
            values=_host_to_device(values, np.float32, device),
        )

    @property
    def index(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.row_ids, self.token_ids


@dataclass(frozen=True)
class LogitEdits:
    """All the sparse edits of one batch; a field is None when no row needs that edit."""

    logit_bias: SparseLogitEdit | None = None  # values: bias added to the logit
    min_tokens_ban: SparseLogitEdit | None = None  # values: -inf (EOS / stop tokens banned)
    repetition: SparseLogitEdit | None = None  # values: the row's repetition_penalty
    output_penalty: SparseLogitEdit | None = None  # values: frequency * count + presence, subtracted

    @property
    def is_empty(self) -> bool:
        return (
            self.logit_bias is None
            and self.min_tokens_ban is None
            and self.repetition is None
            and self.output_penalty is None
        )


def build_logit_edits(requests: Sequence[Request], vocab_size: int, device: torch.device) -> LogitEdits:
    """Every edit the batch needs. Raises ValueError (naming logit_bias) for a bias on a token outside [0, V)."""
    return LogitEdits(
        logit_bias=_build_logit_bias(requests, vocab_size, device),
        min_tokens_ban=_build_min_tokens_ban(requests, vocab_size, device),
        repetition=_build_repetition(requests, vocab_size, device),
        output_penalty=_build_output_penalty(requests, vocab_size, device),
    )


def apply_logit_edits(logits: torch.Tensor, edits: LogitEdits) -> torch.Tensor:
    """Apply `edits` to logits [N, V] in place, in order bias -> min_tokens -> repetition -> output penalties."""
    if edits.logit_bias is not None:
        logits.index_put_(edits.logit_bias.index, edits.logit_bias.values, accumulate=True)
    if edits.min_tokens_ban is not None:
        logits.index_put_(edits.min_tokens_ban.index, edits.min_tokens_ban.values)
    if edits.repetition is not None:
        seen_logits = logits[edits.repetition.index]  # [E]
        penalty = edits.repetition.values
        logits[edits.repetition.index] = torch.where(
            seen_logits > 0, seen_logits / penalty, seen_logits * penalty
        )
    if edits.output_penalty is not None:
        logits.index_put_(edits.output_penalty.index, -edits.output_penalty.values, accumulate=True)
    return logits


def _build_logit_bias(
    requests: Sequence[Request], vocab_size: int, device: torch.device
) -> SparseLogitEdit | None:
    row_ids: list[int] = []
    token_ids: list[int] = []
    values: list[float] = []
    for row, request in enumerate(requests):
        bias = request.sampling_params.logit_bias
        if not bias:
            continue
        for token_id, value in bias.items():
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"logit_bias token id {token_id} is outside the vocabulary [0, {vocab_size})"
                )
            row_ids.append(row)
            token_ids.append(token_id)
            values.append(float(value))
    return SparseLogitEdit.from_lists(row_ids, token_ids, values, device)


def _build_min_tokens_ban(
    requests: Sequence[Request], vocab_size: int, device: torch.device
) -> SparseLogitEdit | None:
    """EOS (unless ignore_eos) and stop_token_ids are banned while num_output_tokens < min_tokens."""
    row_ids: list[int] = []
    token_ids: list[int] = []
    for row, request in enumerate(requests):
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            continue
        banned = set(params.stop_token_ids)
        if not params.ignore_eos:
            banned.update(request.eos_token_ids)
        in_vocab = [t for t in banned if 0 <= t < vocab_size]
        row_ids.extend([row] * len(in_vocab))
        token_ids.extend(in_vocab)
    return SparseLogitEdit.from_lists(row_ids, token_ids, [float("-inf")] * len(row_ids), device)


def _build_repetition(
    requests: Sequence[Request], vocab_size: int, device: torch.device
) -> SparseLogitEdit | None:
    row_ids: list[int] = []
    token_ids: list[int] = []
    values: list[float] = []
    for row, request in enumerate(requests):
        penalty = request.sampling_params.repetition_penalty
        if penalty == 1.0:
            continue
        seen = _in_vocab(set(request.all_token_ids), vocab_size)
        row_ids.extend([row] * len(seen))
        token_ids.extend(seen)
        values.extend([penalty] * len(seen))
    return SparseLogitEdit.from_lists(row_ids, token_ids, values, device)


def _build_output_penalty(
    requests: Sequence[Request], vocab_size: int, device: torch.device
) -> SparseLogitEdit | None:
    row_ids: list[int] = []
    token_ids: list[int] = []
    values: list[float] = []
    for row, request in enumerate(requests):
        params = request.sampling_params
        if (
            params.frequency_penalty == 0.0 and params.presence_penalty == 0.0
        ) or not request.output_token_ids:
            continue
        for token_id, count in Counter(request.output_token_ids).items():
            if 0 <= token_id < vocab_size:
                row_ids.append(row)
                token_ids.append(token_id)
                values.append(params.frequency_penalty * count + params.presence_penalty)
    return SparseLogitEdit.from_lists(row_ids, token_ids, values, device)


def _in_vocab(token_ids: set[int], vocab_size: int) -> list[int]:
    if token_ids and (min(token_ids) < 0 or max(token_ids) >= vocab_size):
        return [t for t in token_ids if 0 <= t < vocab_size]
    return list(token_ids)


def _host_to_device(
    values: list[int] | list[float], dtype: type[np.generic], device: torch.device
) -> torch.Tensor:
    """A tensor from a long Python list (numpy converts lists several times faster than torch.tensor)."""
    return torch.from_numpy(np.asarray(values, dtype=dtype)).to(device)
