"""GGUF files written here from the tiny random checkpoints, the way llama.cpp's converter lays them out
(names, reversed shapes, per-head q/k row interleave for "llama" only), loaded back and compared with the
Hugging Face tensors: llama (Q8_0 matrices, llama3 rope_freqs), qwen2 (F32, biases), qwen3 (F16, q/k norm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from yaie.models.arch import RopeScaling
from yaie.models.loader import Checkpoint, load_checkpoint

LAYER_PARTS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GLOBAL_PARTS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
NUM_HEADS, NUM_KV_HEADS = 4, 2


def gguf_name(hf_name: str) -> str:
    stem, _, kind = hf_name.rpartition(".")
    if stem in GLOBAL_PARTS:
        return f"{GLOBAL_PARTS[stem]}.{kind}"
    _, _, layer_idx, part = stem.split(".", 3)
    return f"blk.{layer_idx}.{LAYER_PARTS[part]}.{kind}"


def interleave_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: within each head, rows (first half, second half) -> interleaved pairs."""
    grouped = weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def copy_tokenizer_metadata(writer: GGUFWriter, source: GGUFReader) -> None:
    def value(key: str):  # type: ignore[no-untyped-def]
        return source.fields[key].contents()

    writer.add_tokenizer_model(value("tokenizer.ggml.model"))
    writer.add_tokenizer_pre(value("tokenizer.ggml.pre"))
    writer.add_token_list(value("tokenizer.ggml.tokens"))
    writer.add_token_types(value("tokenizer.ggml.token_type"))
    writer.add_token_merges(value("tokenizer.ggml.merges"))
    writer.add_bos_token_id(value("tokenizer.ggml.bos_token_id"))
    writer.add_eos_token_id(value("tokenizer.ggml.eos_token_id"))
    writer.add_unk_token_id(value("tokenizer.ggml.unknown_token_id"))
    writer.add_pad_token_id(value("tokenizer.ggml.padding_token_id"))
    writer.add_chat_template(value("tokenizer.chat_template"))


def encode_tensor(hf_name: str, tensor: torch.Tensor, gguf_arch: str, tensor_type: GGMLQuantizationType):
    """(GGUF array, raw type, the HF tensor a loader must give back) for one checkpoint tensor."""
    array = tensor.numpy()
    if gguf_arch == "llama" and ".q_proj." in hf_name:
        array = interleave_rows(array, NUM_HEADS)
    elif gguf_arch == "llama" and ".k_proj." in hf_name:
        array = interleave_rows(array, NUM_KV_HEADS)
    if tensor.dim() == 1 or tensor_type == GGMLQuantizationType.F32:
        return array, GGMLQuantizationType.F32, tensor
    if tensor_type == GGMLQuantizationType.F16:
        return array.astype(np.float16), tensor_type, tensor.half().float()
    quantized = quantize(array, tensor_type)
    expected = torch.from_numpy(dequantize(quantize(tensor.numpy(), tensor_type), tensor_type))
    return quantized, tensor_type, expected


def write_gguf(
    path: Path, model_dir: Path, gguf_arch: str, tensor_type: GGMLQuantizationType, source: GGUFReader
) -> dict[str, torch.Tensor]:
    """Write `model_dir`'s checkpoint as GGUF; return the tensors a loader must yield, by HF name."""
    state = load_file(model_dir / "model.safetensors")
    writer = GGUFWriter(str(path), gguf_arch)
    writer.add_block_count(2)
    writer.add_context_length(1024)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(NUM_HEADS)
    writer.add_head_count_kv(NUM_KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    if gguf_arch == "qwen3":
        writer.add_key_length(32)
        writer.add_value_length(32)
    copy_tokenizer_metadata(writer, source)
    expected: dict[str, torch.Tensor] = {}
    for hf_name, tensor in state.items():
        array, raw_type, expected[hf_name] = encode_tensor(hf_name, tensor, gguf_arch, tensor_type)
        writer.add_tensor(gguf_name(hf_name), array, raw_dtype=raw_type)
    if gguf_arch == "llama":
        writer.add_rope_freq_base(500000.0)
        writer.add_tensor("rope_freqs.weight", llama3_divisors_from_transformers(500000.0, 16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def llama3_divisors_from_transformers(rope_theta: float, head_dim: int) -> np.ndarray:
    """What llama.cpp stores as rope_freqs for Llama 3.1: unscaled / scaled inverse frequency."""
    rope = {**LLAMA3_ROPE, "rope_theta": rope_theta, "original_max_position_embeddings": 8192}
    config = LlamaConfig(
        hidden_size=head_dim * NUM_HEADS, num_attention_heads=NUM_HEADS, rope_parameters=rope
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    unscaled = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return (unscaled / scaled).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def default_reader(default_gguf_path: Path) -> GGUFReader:
    return GGUFReader(default_gguf_path)


def assert_yields(checkpoint: Checkpoint, expected: dict[str, torch.Tensor]) -> None:
    seen = []
    for name, tensor in checkpoint.iter_weights(torch.float32):
        seen.append(name)
        assert tensor.shape == expected[name].shape, name
        assert torch.equal(tensor, expected[name]), name
    tied = {"lm_head.weight"} if checkpoint.arch.tie_word_embeddings else set()
    assert sorted(seen) == sorted(set(expected) - tied)


def test_llama_gguf_q8_0_with_interleaved_rows_and_llama3_rope(
    tiny_llama_dir: Path, default_reader: GGUFReader, tmp_path: Path
) -> None:
    path = tmp_path / "tiny-llama.gguf"
    expected = write_gguf(path, tiny_llama_dir, "llama", GGMLQuantizationType.Q8_0, default_reader)
    checkpoint = load_checkpoint(str(path))
    arch = checkpoint.arch
    assert arch.architecture == "LlamaForCausalLM" and not arch.tie_word_embeddings
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim) == (4, 2, 16)
    assert arch.rope_scaling == RopeScaling(**LLAMA3_ROPE, original_max_position_embeddings=8192)
    assert_yields(checkpoint, expected)


def test_qwen2_gguf_f32_with_biases(tiny_qwen2_dir: Path, default_reader: GGUFReader, tmp_path: Path) -> None:
    path = tmp_path / "tiny-qwen2.gguf"
    expected = write_gguf(path, tiny_qwen2_dir, "qwen2", GGMLQuantizationType.F32, default_reader)
    checkpoint = load_checkpoint(str(path))
    arch = checkpoint.arch
    assert arch.architecture == "Qwen2ForCausalLM"
    assert arch.attention_bias and not arch.qk_norm and arch.tie_word_embeddings
    assert_yields(checkpoint, expected)


def test_qwen3_gguf_f16_with_qk_norm(
    tiny_qwen3_dir: Path, default_reader: GGUFReader, tmp_path: Path
) -> None:
    path = tmp_path / "tiny-qwen3.gguf"
    expected = write_gguf(path, tiny_qwen3_dir, "qwen3", GGMLQuantizationType.F16, default_reader)
    checkpoint = load_checkpoint(str(path))
    arch = checkpoint.arch
    assert arch.architecture == "Qwen3ForCausalLM" and arch.qk_norm and not arch.attention_bias
    assert arch.head_dim == 32
    assert checkpoint.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert_yields(checkpoint, expected)
