"""Per-step attention metadata: built once by the runner, shared by every layer.

Token layout of a step (the runner orders sequences so): first the decode sequences (one query token each),
then the prefill sequences (several query tokens each: prompt chunks, recomputation after preemption).
Each group is attended in ONE batched call over the paged cache; no per-request loop.

Slots: slot = block_id * block_size + offset. The cache of one layer is [2, num_slots, num_kv_heads, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yaie.attention.cpu_kernel import DecodeKernel


@dataclass(frozen=True)
class GroupMetadata:
    """A batch of sequences attended together.

    block_table: [B, max_blocks] int64 (padding 0); context_lens: [B] tokens of context incl. this step's.
    For the gather path (None when a paged kernel reads the cache in place):
      gather_slots: [B, L] slot of each context position, padded to the longest context (padding -> slot 0);
      attend_mask: [B, 1, Q, L] bool, True where a query may attend a key (causal within its context).
    query_rows: [T_group] index of each real query token in the padded [B * Q] layout (None when Q == 1).
    """

    num_seqs: int
    max_query_len: int
    max_context_len: int
    block_table: torch.Tensor
    context_lens: torch.Tensor
    gather_slots: torch.Tensor | None
    attend_mask: torch.Tensor | None
    query_rows: torch.Tensor | None


@dataclass(frozen=True)
class AttentionMetadata:
    """slot_mapping: [T] cache slot where each new token's K/V is written. num_decode_tokens: tokens [0, Td).

    decode_kernel: the in-place paged decode kernel chosen by the runner for this device (None: gather path).
    """

    slot_mapping: torch.Tensor
    block_size: int
    num_decode_tokens: int
    decode: GroupMetadata | None
    prefill: GroupMetadata | None
    decode_kernel: DecodeKernel | None = None
