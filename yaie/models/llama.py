"""Llama-family decoder (Llama, Mistral, SmolLM, Qwen2 with q/k/v bias, Qwen3 with q/k norm) in plain PyTorch.

The model runs on a flat batch of tokens from many requests: input_ids/positions are [T]; attention reads and
writes the paged KV cache through AttentionMetadata. Q/K/V and gate/up projections are fused (one matmul
each); `load_weights` takes Hugging Face names and fills the fused slices.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from yaie.attention.metadata import AttentionMetadata
from yaie.attention.torch_backend import TorchPagedAttention
from yaie.layers.norm import RMSNorm
from yaie.layers.rotary import RopeTables, RotaryEmbedding
from yaie.models.arch import ModelArchConfig


class Attention(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = arch.num_attention_heads
        self.num_kv_heads = arch.num_key_value_heads
        self.head_dim = arch.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        hidden = arch.hidden_size
        self.qkv_proj = nn.Linear(hidden, self.q_size + 2 * self.kv_size, bias=arch.attention_bias)
        self.o_proj = nn.Linear(self.q_size, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, arch.rms_norm_eps) if arch.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, arch.rms_norm_eps) if arch.qk_norm else None
        self.rotary = rotary
        self.attn = TorchPagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, rope: RopeTables, x: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
                ) -> torch.Tensor:
        # x: [T, hidden]
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(rope, q, k)
        out = self.attn(q, k, v, kv_cache, meta)  # [T, Hq, D]
        return self.o_proj(out.view(num_tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.self_attn = Attention(arch, rotary)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.mlp = MLP(arch.hidden_size, arch.intermediate_size)

    def forward(self, rope: RopeTables, x: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
                ) -> torch.Tensor:
        x = x + self.self_attn(rope, self.input_layernorm(x), kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, arch: ModelArchConfig) -> None:
        super().__init__()
        self.arch = arch
        # given an (uninitialised) weight: the checkpoint overwrites it, and a random init of the table on the meta
        # device would import torch._dynamo (~1 s of start-up)
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size,
                                         _weight=torch.empty(arch.vocab_size, arch.hidden_size))
        self.rotary = RotaryEmbedding(
            arch.head_dim, arch.max_position_embeddings, arch.rope_theta, arch.rope_scaling
        )
        self.layers = nn.ModuleList(DecoderLayer(arch, self.rotary) for _ in range(arch.num_hidden_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.lm_head = None if arch.tie_word_embeddings else nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden: [T, hidden]
        x = self.embed_tokens(input_ids)
        rope = self.rotary.tables(positions, x.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(rope, x, kv_cache, meta)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, hidden] -> logits: [N, vocab] in float32
        if self.lm_head is None:
            return F.linear(hidden, self.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into this model's (fused) parameters; each name must be known."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            target, shard = _map_hf_name(hf_name)
            if target not in params:
                raise KeyError(f"checkpoint tensor {hf_name!r} has no place in {type(self).__name__}")
            param = params[target]
            piece = param.data if shard is None else param.data.narrow(0, *self._shard_range(target, shard))
            if piece.shape != tensor.shape:
                raise ValueError(f"{hf_name}: shape {tuple(tensor.shape)} != expected {tuple(piece.shape)}")
            piece.copy_(tensor)
            loaded.add(f"{target}:{shard}")
        self._check_all_loaded(loaded)

    def _shard_range(self, target: str, shard: str) -> tuple[int, int]:
        arch = self.arch
        q_size = arch.num_attention_heads * arch.head_dim
        kv_size = arch.num_key_value_heads * arch.head_dim
        ranges = {
            "q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size),
            "gate": (0, arch.intermediate_size), "up": (arch.intermediate_size, arch.intermediate_size),
        }
        return ranges[shard]

    def _check_all_loaded(self, loaded: set[str]) -> None:
        expected = 0
        for name, _ in self.named_parameters():
            expected += 3 if "qkv_proj" in name else 2 if "gate_up_proj" in name else 1
        if len(loaded) != expected:
            raise ValueError(f"checkpoint is missing tensors: loaded {len(loaded)} of {expected} weight pieces")


_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate"),
    "mlp.up_proj": ("mlp.gate_up_proj", "up"),
}


def _map_hf_name(hf_name: str) -> tuple[str, str | None]:
    """'model.layers.3.self_attn.k_proj.bias' -> ('layers.3.self_attn.qkv_proj.bias', 'k')."""
    name = hf_name.removeprefix("model.")
    for part, (fused, shard) in _FUSED.items():
        if f".{part}." in name:
            return name.replace(part, fused), shard
    return name, None
