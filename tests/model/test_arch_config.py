"""config.json -> ModelArchConfig: both transformers 4 and 5 RoPE layouts, llama3 scaling against
transformers' own frequencies, sliding windows, and rejection of what the model code cannot run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from yaie.models.arch import (
    RopeScaling,
    expected_weight_names,
    expected_weight_shape,
    llama3_frequency_divisors,
)
from yaie.models.loader import ModelLoadError
from yaie.models.safetensors_loader import read_arch, read_rope

CONFIG_PATH = Path("/models/x/config.json")
LLAMA3_PARAMS = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def base_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def test_transformers5_rope_parameters() -> None:
    config = base_config(rope_parameters={**LLAMA3_PARAMS, "rope_theta": 500000.0})
    rope_theta, scaling = read_rope(config, CONFIG_PATH)
    assert rope_theta == 500000.0
    assert scaling == RopeScaling(**LLAMA3_PARAMS)


def test_transformers4_rope_theta_and_rope_scaling() -> None:
    config = base_config(rope_theta=1e6, rope_scaling={"type": "linear", "factor": 2.0})
    assert read_rope(config, CONFIG_PATH) == (1e6, RopeScaling(rope_type="linear", factor=2.0))


def test_default_rope_has_no_scaling() -> None:
    assert read_rope(base_config(), CONFIG_PATH) == (10000.0, None)
    assert read_rope(
        base_config(rope_parameters={"rope_theta": 5.0, "rope_type": "default"}), CONFIG_PATH
    ) == (
        5.0,
        None,
    )


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_unsupported_rope_type_names_config(rope_type: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"{CONFIG_PATH}.*{rope_type}"):
        read_rope(base_config(rope_scaling={"rope_type": rope_type, "factor": 4.0}), CONFIG_PATH)


def test_llama3_with_missing_fields_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="low_freq_factor"):
        read_rope(base_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}), CONFIG_PATH)


@pytest.mark.parametrize(("rope_theta", "head_dim"), [(500000.0, 128), (10000.0, 64)])
def test_llama3_divisors_match_transformers(rope_theta: float, head_dim: int) -> None:
    rope = {**LLAMA3_PARAMS, "rope_theta": rope_theta}
    hf_config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_parameters=rope)
    scaled_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, torch.device("cpu"))  # [head_dim // 2]
    inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    divisors = torch.tensor(llama3_frequency_divisors(RopeScaling(**LLAMA3_PARAMS), rope_theta, head_dim))
    torch.testing.assert_close((inv_freq / divisors).float(), scaled_inv_freq, rtol=1e-5, atol=0)
    assert divisors.min() == 1.0 and divisors.max() == 8.0


def test_head_dim_defaults_and_explicit() -> None:
    arch = read_arch(base_config(), CONFIG_PATH, eos_token_ids=(2,))
    assert arch.head_dim == 16 and arch.q_size == 64 and arch.kv_size == 32
    arch = read_arch(base_config(head_dim=32, architectures=["Qwen3ForCausalLM"]), CONFIG_PATH, (2,))
    assert (
        arch.head_dim == 32
        and arch.qk_norm
        and expected_weight_shape(arch, "model.layers.0.self_attn.o_proj.weight") == (64, 128)
    )


def test_sliding_window_caps_context_only_when_used() -> None:
    mistral = base_config(architectures=["MistralForCausalLM"], sliding_window=1024)
    assert read_arch(mistral, CONFIG_PATH, (2,)).max_position_embeddings == 1024
    assert read_arch({**mistral, "sliding_window": None}, CONFIG_PATH, (2,)).max_position_embeddings == 4096
    qwen2 = base_config(architectures=["Qwen2ForCausalLM"], sliding_window=1024, use_sliding_window=False)
    assert read_arch(qwen2, CONFIG_PATH, (2,)).max_position_embeddings == 4096


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_unsupported_or_invalid_config_names_the_file(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"{CONFIG_PATH}.*{message}"):
        read_arch(base_config(**overrides), CONFIG_PATH, (2,))


def test_missing_key_names_it() -> None:
    config = base_config()
    del config["intermediate_size"]
    with pytest.raises(ModelLoadError, match=rf"{CONFIG_PATH}.*intermediate_size"):
        read_arch(config, CONFIG_PATH, (2,))


def test_arch_config_validates_with_value_error_naming_the_field() -> None:
    arch = read_arch(base_config(), CONFIG_PATH, (2,))
    with pytest.raises(ValueError, match="hidden_size"):
        replace(arch, hidden_size=0)
    with pytest.raises(ValueError, match="eos_token_ids"):
        replace(arch, eos_token_ids=())
    with pytest.raises(ValueError, match="architecture"):
        replace(arch, architecture="GPT2LMHeadModel")


def test_expected_weight_names_follow_the_arch() -> None:
    llama = read_arch(base_config(), CONFIG_PATH, (2,))
    names = expected_weight_names(llama)
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    assert len(names) == 2 + 9 * 2 + 1
    tied_qwen2 = replace(
        llama, architecture="Qwen2ForCausalLM", attention_bias=True, tie_word_embeddings=True
    )
    names = expected_weight_names(tied_qwen2)
    assert "lm_head.weight" not in names and "model.layers.1.self_attn.v_proj.bias" in names
