"""Hugging Face model directories: config.json -> ModelArchConfig, *.safetensors -> lazily read tensors.

Every shard header is opened (and so validated) up front; tensor data is read from the memory map one
tensor at a time when asked for. RoPE settings are read from transformers 4's `rope_theta` +
`rope_scaling` or transformers 5's `rope_parameters`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase

from yaie.models.arch import (
    SUPPORTED_ARCHITECTURES,
    SUPPORTED_ROPE_TYPES,
    ModelArchConfig,
    ModelLoadError,
    RopeScaling,
)
from yaie.models.tokenizer import load_hf_tokenizer, merge_eos_token_ids

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; ModelLoadError naming the file when it is missing or malformed."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


@dataclass
class SafetensorsWeights:
    """The tensors of a (possibly sharded) safetensors checkpoint, read on demand."""

    path: Path
    shards: dict[Path, Any]  # shard file -> open safe_open handle (memory-mapped)
    shard_of: dict[str, Path]  # tensor name -> shard file holding it

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            name: tuple(self.shards[shard].get_slice(name).get_shape())
            for name, shard in self.shard_of.items()
        }

    def load(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        shard = self.shard_of[name]
        try:
            tensor = self.shards[shard].get_tensor(name)
        except Exception as exc:  # safetensors raises its own error type for bad data
            raise ModelLoadError(f"{shard}: cannot read tensor {name!r}: {exc}") from exc
        return tensor.to(dtype)


def open_safetensors(model_dir: Path) -> SafetensorsWeights:
    """Open every shard listed by the index (or every *.safetensors file) and map tensor names to shards."""
    index_path = model_dir / INDEX_FILE
    if index_path.exists():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index_path}: missing or empty 'weight_map'")
        shard_files = sorted({model_dir / str(shard) for shard in weight_map.values()})
    else:
        shard_files = sorted(model_dir.glob("*.safetensors"))
    if not shard_files:
        raise ModelLoadError(
            f"{model_dir}: no *.safetensors weight files (other weight formats are not supported)"
        )
    shards: dict[Path, Any] = {}
    shard_of: dict[str, Path] = {}
    for shard_file in shard_files:
        if not shard_file.is_file():
            raise ModelLoadError(f"{shard_file}: weight shard listed in {INDEX_FILE} does not exist")
        try:
            handle = safe_open(str(shard_file), framework="pt")
        except Exception as exc:  # SafetensorError for truncated or malformed headers
            raise ModelLoadError(f"{shard_file}: not a valid safetensors file: {exc}") from exc
        shards[shard_file] = handle
        for name in handle.keys():  # noqa: SIM118 -- safe_open handles are not iterable
            shard_of[name] = shard_file
    return SafetensorsWeights(path=model_dir, shards=shards, shard_of=shard_of)


def read_rope(config: dict[str, Any], config_path: Path) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ModelLoadError(
            f"{config_path}: rope_parameters / rope_scaling must be an object, got {params!r}"
        )
    rope_theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        supported = ", ".join(sorted(SUPPORTED_ROPE_TYPES))
        raise ModelLoadError(f"{config_path}: unsupported rope type {rope_type!r} (supported: {supported})")
    if rope_type == "default":
        return rope_theta, None
    try:
        scaling = RopeScaling(
            rope_type=rope_type,
            factor=float(params.get("factor", 1.0)),
            low_freq_factor=params.get("low_freq_factor"),
            high_freq_factor=params.get("high_freq_factor"),
            original_max_position_embeddings=params.get("original_max_position_embeddings"),
        )
    except ValueError as exc:
        raise ModelLoadError(f"{config_path}: bad rope scaling {params}: {exc}") from exc
    return rope_theta, scaling


def architecture_name(config: dict[str, Any], config_path: Path) -> str:
    """`architectures[0]` when it is one we load; ModelLoadError listing the supported ones otherwise."""
    architectures = config.get("architectures")
    name = architectures[0] if isinstance(architectures, list) and architectures else None
    if name not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise ModelLoadError(f"{config_path}: unsupported architecture {name!r}; supported: {supported}")
    return name


def _check_unsupported_features(config: dict[str, Any], architecture: str, config_path: Path) -> None:
    if config.get("mlp_bias"):
        raise ModelLoadError(f"{config_path}: mlp_bias=true is not supported")
    if architecture != "Qwen2ForCausalLM" and config.get("attention_bias"):
        raise ModelLoadError(f"{config_path}: attention_bias=true (o_proj bias) is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(
            f"{config_path}: hidden_act {config.get('hidden_act')!r} is not supported (silu only)"
        )


def max_positions(config: dict[str, Any], architecture: str) -> int:
    """The context length we can serve exactly: capped at the sliding window when one is in force.

    Full attention equals sliding-window attention for sequences no longer than the window.
    """
    max_position_embeddings = int(config.get("max_position_embeddings", 2048))
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", architecture == "MistralForCausalLM")
    if uses_window and isinstance(window, int) and window > 0:
        return min(max_position_embeddings, window)
    return max_position_embeddings


def read_arch(config: dict[str, Any], config_path: Path, eos_token_ids: tuple[int, ...]) -> ModelArchConfig:
    """ModelArchConfig from a Hugging Face config.json (already parsed)."""
    architecture = architecture_name(config, config_path)
    _check_unsupported_features(config, architecture, config_path)
    rope_theta, rope_scaling = read_rope(config, config_path)
    try:
        num_heads = int(config["num_attention_heads"])
        hidden_size = int(config["hidden_size"])
        return ModelArchConfig(
            architecture=architecture,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(config.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=max_positions(config, architecture),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=architecture == "Qwen2ForCausalLM",
            qk_norm=architecture == "Qwen3ForCausalLM",
            hidden_act=str(config.get("hidden_act", "silu")),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos_token_ids,
        )
    except KeyError as exc:
        raise ModelLoadError(f"{config_path}: required key {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path}: invalid model config: {exc}") from exc


def load_hf_dir(model_dir: Path) -> tuple[ModelArchConfig, SafetensorsWeights, PreTrainedTokenizerBase]:
    """Architecture, lazily read weights and tokenizer of a Hugging Face model directory."""
    config_path = model_dir / CONFIG_FILE
    config = read_json(config_path)
    architecture_name(config, config_path)  # fail on the architecture before the slower steps
    weights = open_safetensors(model_dir)
    tokenizer = load_hf_tokenizer(model_dir)
    generation_path = model_dir / GENERATION_CONFIG_FILE
    generation = read_json(generation_path) if generation_path.exists() else {}
    declared = [generation.get("eos_token_id"), config.get("eos_token_id")]
    eos_token_ids = merge_eos_token_ids(declared, tokenizer, config_path)
    arch = read_arch(config, config_path, eos_token_ids)
    if arch.bos_token_id is None:
        arch = replace(arch, bos_token_id=generation.get("bos_token_id", tokenizer.bos_token_id))
    return arch, weights, tokenizer
