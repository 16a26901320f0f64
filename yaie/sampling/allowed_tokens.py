"""Grammar token masks in the sampler: which tokens each constrained row may sample.

The engine computes one packed bitmask row per constrained request that samples this step
(`GrammarBitmask`, keyed by scheduler chunk index, built on the host); the runner maps chunks to its sampling
rows (`AllowedTokens`, on the device) and the sampler sets every disallowed logit of those rows to -inf
before any other stage, so penalties, logprobs and sampling all see the constrained distribution.
Unconstrained rows are never touched, and a batch without constraints carries None and pays nothing.

Bit layout (llguidance's): token t is allowed iff bit (t % 32) of word (t // 32) is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GrammarBitmask:
    """The engine's masks for one step: row i of `bitmask` belongs to scheduler chunk `chunk_indices[i]`."""

    chunk_indices: tuple[int, ...]  # [G]
    bitmask: torch.Tensor  # [G, ceil(V / 32)] int32 on the host


@dataclass(frozen=True)
class AllowedTokens:
    """The sampler's view: row `row_ids[i]` of the logits may only sample tokens set in `bitmask[i]`."""

    row_ids: torch.Tensor  # [G] int64
    bitmask: torch.Tensor  # [G, ceil(V / 32)] int32

    @classmethod
    def for_rows(cls, grammar: GrammarBitmask, sample_chunk_indices: Sequence[int],
                 device: torch.device) -> AllowedTokens:
        """Map the engine's chunk-keyed masks onto the sampler's rows (row r samples chunk
        sample_chunk_indices[r]). Raises ValueError for a chunk that does not sample this step."""
        row_of_chunk = {chunk: row for row, chunk in enumerate(sample_chunk_indices)}
        missing = [c for c in grammar.chunk_indices if c not in row_of_chunk]
        if missing:
            raise ValueError(f"grammar masks for chunks {missing} that do not sample this step")
        rows = [row_of_chunk[c] for c in grammar.chunk_indices]
        return cls(row_ids=torch.tensor(rows, dtype=torch.int64, device=device),
                   bitmask=grammar.bitmask.to(device, non_blocking=True))


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [G, W] int32 -> allowed [G, vocab_size] bool."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)  # [32]
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [G, W, 32]
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_allowed_tokens(logits: torch.Tensor, allowed: AllowedTokens) -> torch.Tensor:
    """Set the disallowed logits of the constrained rows to -inf, in place. logits: [N, V] float32.

    On the CPU the bits are unpacked by numpy (unpackbits, then a masked copy per row): about 1 ms for 16
    rows of a 49k vocabulary, where torch's broadcast shifts and masked_fill take over ten.
    """
    vocab_size = logits.shape[1]
    if allowed.bitmask.shape[1] * 32 < vocab_size:
        raise ValueError(f"bitmask covers {allowed.bitmask.shape[1] * 32} tokens, logits have {vocab_size}")
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
        bits = np.unpackbits(allowed.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")  # [G, W*32]
        rows = logits.numpy()  # [N, V], shares memory with logits
        for position, row in enumerate(allowed.row_ids.tolist()):
            np.copyto(rows[row], -np.inf, where=bits[position, :vocab_size] == 0)
        return logits
    is_allowed = unpack_bitmask(allowed.bitmask, vocab_size)  # [G, V]
    selected = logits.index_select(0, allowed.row_ids)  # [G, V]
    logits.index_copy_(0, allowed.row_ids, selected.masked_fill_(~is_allowed, float("-inf")))
    return logits


def bitmask_from_token_ids(allowed_ids: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """[G, ceil(V / 32)] int32 with exactly the given token ids allowed per row (tests and tools)."""
    num_words = (vocab_size + 31) // 32
    words = [[0] * num_words for _ in allowed_ids]
    for row, token_ids in enumerate(allowed_ids):
        for token_id in token_ids:
            words[row][token_id // 32] |= 1 << (token_id % 32)
    as_int32 = [[w - (1 << 32) if w >= 1 << 31 else w for w in row] for row in words]
    return torch.tensor(as_int32, dtype=torch.int32).reshape(len(allowed_ids), num_words)
