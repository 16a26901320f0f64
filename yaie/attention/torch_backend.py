"""Reference paged attention in plain PyTorch (CPU and CUDA): write K/V through the slot mapping, gather each
sequence's context through its block table, and run one scaled-dot-product attention per group."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yaie.attention.kv_layout import read_kv, write_kv
from yaie.attention.metadata import AttentionMetadata, GroupMetadata


class TorchPagedAttention:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        # q: [T, Hq, D]; k, v: [T, Hkv, D]; kv_cache: [2, S, Hkv, D] (kv_layout) -> out: [T, Hq, D]
        write_kv(kv_cache, meta.slot_mapping, k, v)
        num_decode = meta.num_decode_tokens
        out = torch.empty_like(q)
        if meta.decode is not None and meta.decode_kernel is not None:
            with torch.profiler.record_function("paged_decode_attention_kernel"):
                out[:num_decode] = meta.decode_kernel(
                    q[:num_decode].contiguous(), kv_cache[0], kv_cache[1], meta.decode.block_table,
                    meta.decode.context_lens, meta.block_size, self.scale,
                )
        elif meta.decode is not None:
            out[:num_decode] = self._attend(q[:num_decode], kv_cache, meta.decode)
        if meta.prefill is not None:
            out[num_decode:] = self._attend(q[num_decode:], kv_cache, meta.prefill)
        return out

    def _attend(self, q: torch.Tensor, kv_cache: torch.Tensor, group: GroupMetadata) -> torch.Tensor:
        # q: [Tg, Hq, D] -> [Tg, Hq, D]
        num_seqs, max_q, max_ctx = group.num_seqs, group.max_query_len, group.max_context_len
        assert group.gather_slots is not None and group.attend_mask is not None
        shape = (num_seqs, max_ctx, self.num_kv_heads, self.head_dim)
        key, value = read_kv(kv_cache, group.gather_slots.view(-1), q.dtype)
        key, value = key.view(shape), value.view(shape)
        if group.query_rows is None:  # one query token per sequence
            query = q.view(num_seqs, 1, self.num_heads, self.head_dim)
        else:
            query = q.new_zeros(num_seqs * max_q, self.num_heads, self.head_dim)
            query[group.query_rows] = q
            query = query.view(num_seqs, max_q, self.num_heads, self.head_dim)
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2),  # [B, Hq, Q, D]
            key.transpose(1, 2),  # [B, Hkv, L, D]
            value.transpose(1, 2),
            attn_mask=group.attend_mask,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [B, Hq, Q, D]
        out = out.transpose(1, 2).reshape(num_seqs * max_q, self.num_heads, self.head_dim)
        return out if group.query_rows is None else out[group.query_rows]
