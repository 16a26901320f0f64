"""The shape of a decoder-only transformer, as the loader reads it from a checkpoint. Stdlib only.

`ModelArchConfig` is the contract between the loader (GGUF or Hugging Face safetensors) and the model code:
every field is resolved here (no `None` meaning "ask the config again"), so the model never reads
checkpoint metadata itself. `expected_weight_names` is the matching contract for weights: the exact
Hugging Face names a checkpoint must provide for a given architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)
SUPPORTED_ROPE_TYPES: frozenset[str] = frozenset({"default", "linear", "llama3"})


class ModelLoadError(Exception):
    """A checkpoint could not be loaded. The message names the file and what is wrong with it."""


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling.

    `linear`: positions divided by `factor`. `llama3`: frequencies whose wavelength exceeds
    `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those shorter than
    `original_max_position_embeddings / high_freq_factor` are kept, and the band between is interpolated.
    The llama3-only fields are None for other types.
    """

    rope_type: str
    factor: float = 1.0
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            supported = ", ".join(sorted(SUPPORTED_ROPE_TYPES))
            raise ValueError(f"rope_type must be one of {supported}, got {self.rope_type!r}")
        if self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3":
            _require_llama3_fields(self)


def _require_llama3_fields(scaling: RopeScaling) -> None:
    if scaling.low_freq_factor is None or scaling.high_freq_factor is None:
        raise ValueError("llama3 rope scaling needs low_freq_factor and high_freq_factor")
    if scaling.original_max_position_embeddings is None:
        raise ValueError("llama3 rope scaling needs original_max_position_embeddings")
    if scaling.high_freq_factor <= scaling.low_freq_factor:
        raise ValueError(
            f"high_freq_factor ({scaling.high_freq_factor}) must be > low_freq_factor ({scaling.low_freq_factor})"
        )


def llama3_frequency_divisors(scaling: RopeScaling, rope_theta: float, head_dim: int) -> list[float]:
    """By how much llama3 scaling divides each RoPE frequency: 1 (kept) .. `factor`; one per rotary pair.

    Frequency i is `rope_theta ** (-2 i / head_dim)`; the scaled frequency is that divided by entry i.
    """
    if scaling.rope_type != "llama3":
        raise ValueError(f"scaling must be llama3, got {scaling.rope_type!r}")
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    old_context = scaling.original_max_position_embeddings
    assert low is not None and high is not None and old_context is not None  # checked in __post_init__
    divisors = []
    for pair_idx in range(head_dim // 2):
        wavelength = 2 * math.pi * rope_theta ** (2 * pair_idx / head_dim)
        if wavelength < old_context / high:
            divisors.append(1.0)
        elif wavelength > old_context / low:
            divisors.append(scaling.factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            divisors.append(1.0 / ((1 - smooth) / scaling.factor + smooth))
    return divisors


@dataclass(frozen=True, kw_only=True)
class ModelArchConfig:
    """Everything the model code needs to build itself, fully resolved.

    Invariants: `num_attention_heads % num_key_value_heads == 0`; `head_dim` may differ from
    `hidden_size // num_attention_heads` (Qwen3). `attention_bias` means q/k/v projections carry a bias
    (o_proj never does). `qk_norm` means a per-head RMSNorm (weight of size `head_dim`) on q and k before
    RoPE. `eos_token_ids` holds every token that ends generation (the tokenizer's eos and the chat
    template's end-of-turn token), never empty.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    hidden_act: str = "silu"
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
            raise ValueError(f"architecture must be one of {supported}, got {self.architecture!r}")
        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(
                f"rms_norm_eps and rope_theta must be > 0, got {self.rms_norm_eps}, {self.rope_theta}"
            )
        if not self.eos_token_ids:
            raise ValueError("eos_token_ids must not be empty")

    @property
    def q_size(self) -> int:
        """Output features of q_proj: num_attention_heads * head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Output features of k_proj and of v_proj: num_key_value_heads * head_dim."""
        return self.num_key_value_heads * self.head_dim


def expected_weight_names(arch: ModelArchConfig) -> list[str]:
    """Every Hugging Face weight name the model needs, in checkpoint order; `lm_head.weight` only if untied."""
    names = ["model.embed_tokens.weight"]
    for layer_idx in range(arch.num_hidden_layers):
        prefix = f"model.layers.{layer_idx}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(f"{prefix}.self_attn.{proj}.weight")
        if arch.attention_bias:
            names += [f"{prefix}.self_attn.{proj}.bias" for proj in ("q_proj", "k_proj", "v_proj")]
        if arch.qk_norm:
            names += [f"{prefix}.self_attn.q_norm.weight", f"{prefix}.self_attn.k_norm.weight"]
        names += [f"{prefix}.mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]
        names += [f"{prefix}.input_layernorm.weight", f"{prefix}.post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    if not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def expected_weight_shape(arch: ModelArchConfig, name: str) -> tuple[int, ...]:
    """The HF-layout shape ([out_features, in_features] for linears) of one name from `expected_weight_names`."""
    hidden = arch.hidden_size
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (arch.vocab_size, hidden)
    suffix_shapes: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (arch.q_size, hidden),
        "self_attn.k_proj.weight": (arch.kv_size, hidden),
        "self_attn.v_proj.weight": (arch.kv_size, hidden),
        "self_attn.o_proj.weight": (hidden, arch.q_size),
        "self_attn.q_proj.bias": (arch.q_size,),
        "self_attn.k_proj.bias": (arch.kv_size,),
        "self_attn.v_proj.bias": (arch.kv_size,),
        "self_attn.q_norm.weight": (arch.head_dim,),
        "self_attn.k_norm.weight": (arch.head_dim,),
        "mlp.gate_proj.weight": (arch.intermediate_size, hidden),
        "mlp.up_proj.weight": (arch.intermediate_size, hidden),
        "mlp.down_proj.weight": (hidden, arch.intermediate_size),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "norm.weight": (hidden,),
    }
    for suffix, shape in suffix_shapes.items():
        if name.endswith(suffix):
            return shape
    raise ValueError(f"name is not a weight of {arch.architecture}: {name!r}")
