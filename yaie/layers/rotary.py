"""Rotary position embeddings (rotate-half layout, as Hugging Face Llama/Qwen), with RoPE scaling variants.

The cos/sin tables are precomputed for every position up to max_position and indexed per token, so a
batch of requests at arbitrary positions is one gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from yaie.models.arch import RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """[head_dim // 2] inverse frequencies after the declared scaling ("default"/None, "linear", "llama3")."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None or scaling.rope_type in ("default", None):
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"unsupported rope_scaling type {scaling.rope_type!r} (supported: default, linear, llama3)")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """llama3 scaling in float32 torch ops, in the order transformers computes it: bit-identical frequencies.

    (`arch.llama3_frequency_divisors` states the same rule in float64 Python for checking GGUF metadata; using it
    here moves frequencies by ~1 ulp, enough to break greedy identity with transformers in rare cases.)
    """
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: RopeScaling | None) -> None:
        super().__init__()
        self.head_dim, self.max_position, self.theta, self.scaling = head_dim, max_position, theta, scaling
        self.register_buffer("cos_cached", torch.empty(max_position, head_dim), persistent=False)
        self.register_buffer("sin_cached", torch.empty(max_position, head_dim), persistent=False)
        self.build_tables()

    def build_tables(self) -> None:
        """(Re)compute the cos/sin tables in place; call after materialising a meta-device model."""
        device = self.cos_cached.device
        if device.type == "meta":
            return
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device)
        positions = torch.arange(self.max_position, dtype=torch.int64, device=device).float()
        freqs = torch.outer(positions, inv_freq)  # [max_position, head_dim // 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_position, head_dim]
        self.cos_cached = emb.cos()
        self.sin_cached = emb.sin()

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeTables:
        """The rotation for a step's tokens, looked up once and shared by every layer."""
        cos = self.cos_cached[positions].unsqueeze(1).to(dtype)  # [T, 1, D]
        sin = self.sin_cached[positions].unsqueeze(1).to(dtype)
        half = self.head_dim // 2
        return RopeTables(cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1))

    def forward(self, rope: RopeTables, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [T, Hq, D]; k: [T, Hkv, D]
        return _rotate(q, rope), _rotate(k, rope)


@dataclass(frozen=True)
class RopeTables:
    """cos: [T, 1, D]; signed_sin: [T, 1, D], the sine with its first half negated, so that
    rotate_half(x) * sin == roll(x, D / 2) * signed_sin exactly (a sign flip rounds nothing)."""

    cos: torch.Tensor
    signed_sin: torch.Tensor


def _rotate(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    # x: [T, H, D] -> x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2])
    return x * rope.cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * rope.signed_sin
