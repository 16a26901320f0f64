"""The paged KV cache's memory layout, one tensor per layer, and the PyTorch writes and reads of it.

float32 / float16 / bfloat16: [2, S, Hkv, D] of that dtype (S = num_blocks * block_size slots; index 0 is K,
1 is V). int8 (CPU): [2, S, Hkv, D + 4] bytes: each head's D codes, then their float32 scale, per token and
head (value = code * scale, scale = max|x| / 127): half the bytes of float16 for the memory-bound decode
attention, with the scale next to the codes it belongs to. The C kernels (csrc/paged_attention.c, the fused
step) read and write the same layout with the same arithmetic.
"""

from __future__ import annotations

import torch

INT8_SCALE_BYTES = 4  # a float32 scale after each head's int8 codes
INT8_MAX = 127.0


def cache_shape(num_slots: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> tuple[int, ...]:
    """The shape of one layer's cache tensor."""
    row = head_dim + INT8_SCALE_BYTES if dtype == torch.int8 else head_dim
    return (2, num_slots, num_kv_heads, row)


def bytes_per_slot(num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V bytes one token takes in one layer."""
    shape = cache_shape(1, num_kv_heads, head_dim, dtype)
    return shape[0] * shape[2] * shape[3] * torch.empty((), dtype=dtype).element_size()


def write_kv(kv_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """k, v: [T, Hkv, D] float -> the cache slots slot_mapping [T]."""
    if kv_cache.dtype != torch.int8:
        kv_cache[0].index_copy_(0, slot_mapping, k.to(kv_cache.dtype))
        kv_cache[1].index_copy_(0, slot_mapping, v.to(kv_cache.dtype))
        return
    for index, x in enumerate((k, v)):
        codes, scale = quantize_int8(x)
        rows = torch.cat([codes, scale.view(torch.int8)], dim=-1)  # [T, Hkv, D + 4]
        kv_cache[index].index_copy_(0, slot_mapping, rows)


def read_kv(kv_cache: torch.Tensor, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The K and V of `slots` [N] as `dtype`, each [N, Hkv, D]."""
    if kv_cache.dtype != torch.int8:
        return kv_cache[0].index_select(0, slots).to(dtype), kv_cache[1].index_select(0, slots).to(dtype)
    head_dim = kv_cache.shape[-1] - INT8_SCALE_BYTES
    out = []
    for index in (0, 1):
        rows = kv_cache[index].index_select(0, slots)  # [N, Hkv, D + 4] bytes
        scale = rows[..., head_dim:].contiguous().view(torch.float32)  # [N, Hkv, 1]
        out.append((rows[..., :head_dim].float() * scale).to(dtype))
    return out[0], out[1]


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] float -> codes [..., D] int8 and scales [..., 1] float32, per row: scale = max|x| / 127,
    code = round(x * (1 / scale)) -- the C writer's arithmetic, so both paths store the same bytes."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12).div_(INT8_MAX)
    codes = torch.round(x * scale.reciprocal()).to(torch.int8)
    return codes, scale
