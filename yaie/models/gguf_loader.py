"""GGUF checkpoints (llama.cpp format): metadata -> ModelArchConfig, tensors -> HF-named float tensors.

The file is memory-mapped (`GGUFReader`); a tensor is dequantized only when asked for, so loading
holds the model plus one tensor. Three differences from Hugging Face layout are undone here:
- names: `blk.N.attn_q` -> `model.layers.N.self_attn.q_proj`, etc.;
- shapes: GGUF lists dimensions innermost first (the reverse of torch);
- for architecture "llama" only, llama.cpp's converter reorders the rows of each head of attn_q / attn_k
  (pairs of rotary halves interleaved: `reshape(heads, 2, head_dim // 2, ...).swapaxes(1, 2)`); the
  inverse is applied with `num_attention_heads` for q and `num_key_value_heads` for k.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize
from transformers import PreTrainedTokenizerBase

from yaie.models.arch import ModelArchConfig, ModelLoadError, RopeScaling, llama3_frequency_divisors
from yaie.models.tokenizer import load_gguf_tokenizer, merge_eos_token_ids

GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_SUPPORTED_TYPE_NAMES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)  # fmt: skip
SUPPORTED_TENSOR_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    GGMLQuantizationType[name] for name in _SUPPORTED_TYPE_NAMES if name in GGMLQuantizationType.__members__
)
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
ROPE_FREQS_TENSOR = "rope_freqs.weight"


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor name, or None when it has none."""
    stem, dot, kind = gguf_name.rpartition(".")
    if not dot or kind not in ("weight", "bias"):
        return None
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{kind}"
    return None


class _PlainViewReader(GGUFReader):
    """A GGUFReader whose mapping is held as a plain ndarray view of its np.memmap (same pages, same contents).

    gguf-py slices the mapping once per metadata value; on a memmap every slice runs numpy's Python-level
    `memmap.__array_finalize__`, which made reading SmolLM2's 49k-token vocabulary take ~2.3 s (0.7 s as views).
    """

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, mapped: np.ndarray) -> None:
        self._plain_data = mapped.view(np.ndarray)


def open_gguf(path: Path) -> GGUFReader:
    """Memory-map a GGUF file; ModelLoadError naming it when it is not a readable GGUF."""
    try:
        return _PlainViewReader(path, "r")
    except Exception as exc:  # bad magic, truncation and bad offsets surface as several types
        raise ModelLoadError(f"{path}: not a valid GGUF file: {exc}") from exc


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The decoded value of a metadata key (str, number, or list), or `default` when absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


@dataclass
class GGUFWeights:
    """The tensors of one GGUF file under their Hugging Face names, dequantized on demand."""

    path: Path
    tensors: dict[str, ReaderTensor]  # HF name -> memory-mapped tensor
    rows_permuted_heads: dict[str, int]  # HF name -> number of heads whose rows llama.cpp interleaved

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: _hf_shape(tensor) for name, tensor in self.tensors.items()}

    def load(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        tensor = self.tensors[name]
        values = dequantize(tensor.data, tensor.tensor_type)  # float32, numpy order
        weight = torch.from_numpy(np.array(values, dtype=np.float32, copy=True)).reshape(_hf_shape(tensor))
        num_heads = self.rows_permuted_heads.get(name)
        if num_heads is not None:
            weight = unpermute_rows(weight, num_heads)
        return weight.to(dtype)


def _hf_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    return tuple(int(dim) for dim in reversed(tensor.shape.tolist()))


def unpermute_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleave of attn_q / attn_k (weight [heads * head_dim, ...] or bias)."""
    half_head_dim = weight.shape[0] // num_heads // 2
    # weight: [num_heads, half_head_dim, 2, ...] in GGUF order -> [num_heads, 2, half_head_dim, ...] in HF order
    grouped = weight.reshape(num_heads, half_head_dim, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape)


def check_tensors(reader: GGUFReader, path: Path) -> None:
    """ModelLoadError naming the tensor unless every tensor has a known name and a supported type."""
    for tensor in reader.tensors:
        if tensor.name != ROPE_FREQS_TENSOR and hf_name(tensor.name) is None:
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} has no Hugging Face equivalent we know")
        if tensor.tensor_type not in SUPPORTED_TENSOR_TYPES:
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} has unsupported type {tensor.tensor_type.name}; "
                f"supported: {', '.join(sorted(t.name for t in SUPPORTED_TENSOR_TYPES))}"
            )


def read_gguf_weights(reader: GGUFReader, path: Path, arch: ModelArchConfig, gguf_arch: str) -> GGUFWeights:
    """Index the tensors (already checked by `check_tensors`) by HF name."""
    tensors: dict[str, ReaderTensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is not None:  # rope_freqs.weight is folded into arch.rope_scaling by read_arch
            tensors[name] = tensor
    permuted: dict[str, int] = {}
    if gguf_arch == "llama":
        for name in tensors:
            if ".self_attn.q_proj." in name:
                permuted[name] = arch.num_attention_heads
            elif ".self_attn.k_proj." in name:
                permuted[name] = arch.num_key_value_heads
    return GGUFWeights(path=path, tensors=tensors, rows_permuted_heads=permuted)


def gguf_architecture(reader: GGUFReader, path: Path) -> str:
    """The GGUF `general.architecture`; ModelLoadError when it is not one we load."""
    gguf_arch = field_value(reader, "general.architecture")
    if gguf_arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: unsupported GGUF architecture {gguf_arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    return gguf_arch


def metadata_number(reader: GGUFReader, path: Path, key: str, default: float | None = None) -> float:
    """A numeric metadata value (or `default`); ModelLoadError naming the key when missing or not a number."""
    value = field_value(reader, key, default)
    if value is None:
        raise ModelLoadError(f"{path}: metadata key {key} is missing")
    if not isinstance(value, int | float) or value < 0:
        raise ModelLoadError(f"{path}: metadata key {key} must be a non-negative number, got {value!r}")
    return value


def read_arch(
    reader: GGUFReader, path: Path, gguf_arch: str, eos_token_ids: tuple[int, ...]
) -> ModelArchConfig:
    """ModelArchConfig from `{arch}.*` metadata and the tensor list (bias, q/k norm, tied output)."""
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{path}: tensor token_embd.weight is missing")

    def number(suffix: str, default: float | None = None) -> float:
        return metadata_number(reader, path, f"{gguf_arch}.{suffix}", default)

    hidden_size = int(number("embedding_length"))
    num_heads = max(int(number("attention.head_count")), 1)  # 0 is rejected by ModelArchConfig below
    head_dim = int(number("attention.key_length", hidden_size // num_heads))
    try:
        return ModelArchConfig(
            architecture=GGUF_ARCHITECTURES[gguf_arch],
            vocab_size=_hf_shape(tensors["token_embd.weight"])[0],
            hidden_size=hidden_size,
            intermediate_size=int(number("feed_forward_length")),
            num_hidden_layers=int(number("block_count")),
            num_attention_heads=int(number("attention.head_count")),
            num_key_value_heads=int(number("attention.head_count_kv", num_heads)),
            head_dim=head_dim,
            rms_norm_eps=float(number("attention.layer_norm_rms_epsilon")),
            rope_theta=float(number("rope.freq_base", 10000.0)),
            rope_scaling=read_rope_scaling(reader, path, gguf_arch, head_dim),
            max_position_embeddings=int(number("context_length")),
            tie_word_embeddings="output.weight" not in tensors,
            attention_bias="blk.0.attn_q.bias" in tensors,
            qk_norm="blk.0.attn_q_norm.weight" in tensors,
            bos_token_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_ids=eos_token_ids,
        )
    except (ValueError, ZeroDivisionError) as exc:
        raise ModelLoadError(f"{path}: inconsistent model metadata: {exc}") from exc


def read_rope_scaling(reader: GGUFReader, path: Path, gguf_arch: str, head_dim: int) -> RopeScaling | None:
    """`{arch}.rope.scaling.*` metadata, or llama3 scaling recognised from a `rope_freqs.weight` tensor."""
    rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS_TENSOR), None)
    if rope_freqs is not None:
        theta = float(field_value(reader, f"{gguf_arch}.rope.freq_base", 10000.0))
        divisors = dequantize(rope_freqs.data, rope_freqs.tensor_type).reshape(-1)  # [head_dim // 2]
        return _llama3_scaling_from_divisors(divisors, theta, head_dim, path)
    scaling_type = field_value(reader, f"{gguf_arch}.rope.scaling.type", "none")
    if scaling_type == "none":
        return None
    if scaling_type != "linear":
        raise ModelLoadError(f"{path}: unsupported rope scaling type {scaling_type!r} (supported: linear)")
    factor = float(field_value(reader, f"{gguf_arch}.rope.scaling.factor", 1.0))
    return RopeScaling(rope_type="linear", factor=factor)


def _llama3_scaling_from_divisors(
    divisors: np.ndarray, theta: float, head_dim: int, path: Path
) -> RopeScaling:
    """Llama 3.x GGUFs store scaling only as per-frequency divisors; match them to the published parameters."""
    factor = float(divisors.max())
    for old_context in (8192, 4096, 16384, 32768, 131072):
        scaling = RopeScaling(
            rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=old_context,
        )  # fmt: skip
        expected = np.array(llama3_frequency_divisors(scaling, theta, head_dim), dtype=np.float32)
        if expected.shape == divisors.shape and np.allclose(expected, divisors, rtol=1e-4):
            return scaling
    raise ModelLoadError(f"{path}: tensor {ROPE_FREQS_TENSOR} does not match any llama3 rope scaling we know")


def load_gguf(path: Path) -> tuple[ModelArchConfig, GGUFWeights, PreTrainedTokenizerBase]:
    """Architecture, lazily dequantized weights and tokenizer (chat template from metadata) of a GGUF file."""
    reader = open_gguf(path)
    gguf_arch = gguf_architecture(reader, path)
    check_tensors(reader, path)
    chat_template = field_value(reader, "tokenizer.chat_template")
    tokenizer = load_gguf_tokenizer(path, chat_template)
    eos_token_ids = merge_eos_token_ids([field_value(reader, "tokenizer.ggml.eos_token_id")], tokenizer, path)
    arch = read_arch(reader, path, gguf_arch, eos_token_ids)
    return arch, read_gguf_weights(reader, path, arch, gguf_arch), tokenizer
