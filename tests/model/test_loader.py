"""Checkpoint loading: the default SmolLM2 GGUF against transformers' own dequantization, tiny safetensors
directories against transformers' load of the same files, and every failure naming its file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from transformers import AutoModelForCausalLM, PreTrainedModel

from yaie.models.arch import ModelArchConfig, expected_weight_names
from yaie.models.loader import (
    SUPPORTED_ARCHITECTURES,
    Checkpoint,
    ModelLoadError,
    load_checkpoint,
    resolve_model_path,
)

TINY_DIR_FIXTURES = ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]


@pytest.fixture(scope="module")
def default_checkpoint() -> Checkpoint:
    return load_checkpoint(None)


def test_none_resolves_to_the_packaged_gguf(default_gguf_path: Path) -> None:
    assert resolve_model_path(None) == default_gguf_path
    assert default_gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default_gguf_path.is_file()


def test_default_arch_fields(default_checkpoint: Checkpoint) -> None:
    arch = default_checkpoint.arch
    assert default_checkpoint.format == "gguf"
    assert arch.architecture == "LlamaForCausalLM"
    assert (arch.num_hidden_layers, arch.hidden_size, arch.intermediate_size) == (30, 576, 1536)
    assert (arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim) == (9, 3, 64)
    assert arch.vocab_size == 49152
    assert arch.rope_theta == 100000.0 and arch.rope_scaling is None
    assert arch.rms_norm_eps == pytest.approx(1e-5)
    assert arch.max_position_embeddings == 8192
    assert arch.tie_word_embeddings and not arch.attention_bias and not arch.qk_norm
    assert arch.bos_token_id == 1


def test_gguf_weights_equal_transformers_dequantization(
    default_checkpoint: Checkpoint, hf_smollm2_model: PreTrainedModel
) -> None:
    reference = hf_smollm2_model.state_dict()
    seen: list[str] = []
    for name, tensor in default_checkpoint.iter_weights(torch.float32):
        seen.append(name)
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert tensor.shape == reference[name].shape, name
        max_abs_diff = (tensor - reference[name]).abs().max().item()  # exact in practice; 1e-6 allowed
        assert max_abs_diff <= 1e-6, f"{name}: differs by {max_abs_diff}"
    # tied: transformers lists lm_head.weight as the embedding itself; we do not yield it
    assert sorted(seen) == sorted(set(reference) - {"lm_head.weight"})
    assert len(seen) == len(set(seen)) == 2 + 9 * 30


def test_iter_weights_is_lazy_and_converts_dtype(default_checkpoint: Checkpoint) -> None:
    weights = default_checkpoint.iter_weights(torch.bfloat16)
    name, tensor = next(weights)
    weights.close()
    assert name == "model.embed_tokens.weight"
    assert tensor.dtype == torch.bfloat16 and tensor.shape == (49152, 576)
    with pytest.raises(ValueError, match="dtype"):
        next(default_checkpoint.iter_weights(torch.int32))


def test_tokenizer_round_trip(default_checkpoint: Checkpoint) -> None:
    tokenizer = default_checkpoint.tokenizer
    text = "Hello, world! The quick brown fox jumps over 13 lazy dogs.\n  Indented: café"
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(token_ids) == text
    assert tokenizer.encode("<|im_start|>", add_special_tokens=False) == [1]
    assert len(tokenizer) == default_checkpoint.arch.vocab_size


def test_chat_template_renders_and_its_turn_end_stops(default_checkpoint: Checkpoint) -> None:
    tokenizer = default_checkpoint.tokenizer
    messages = [{"role": "user", "content": "What is 2+2?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end_id in default_checkpoint.arch.eos_token_ids


def _arch_matches_config(arch: ModelArchConfig, config: dict) -> None:
    assert arch.architecture == config["architectures"][0]
    assert arch.vocab_size == config["vocab_size"]
    assert arch.num_hidden_layers == config["num_hidden_layers"]
    assert arch.num_key_value_heads == config["num_key_value_heads"]
    expected_head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert arch.head_dim == expected_head_dim
    assert arch.rope_theta == config["rope_parameters"]["rope_theta"]
    assert arch.tie_word_embeddings == config["tie_word_embeddings"]
    assert arch.attention_bias == (arch.architecture == "Qwen2ForCausalLM")
    assert arch.qk_norm == (arch.architecture == "Qwen3ForCausalLM")
    assert arch.eos_token_ids == (2,) and arch.bos_token_id == 1


def _assert_weights_equal_transformers(checkpoint: Checkpoint, model_dir: Path) -> None:
    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).state_dict()
    seen = []
    for name, tensor in checkpoint.iter_weights(torch.float32):
        seen.append(name)
        assert torch.equal(tensor, reference[name]), name
    tied = {"lm_head.weight"} if checkpoint.arch.tie_word_embeddings else set()
    assert sorted(seen) == sorted(set(reference) - tied)


@pytest.mark.parametrize("dir_fixture", TINY_DIR_FIXTURES)
def test_tiny_safetensors_dir_loads(dir_fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(dir_fixture)
    checkpoint = load_checkpoint(str(model_dir))
    assert checkpoint.format == "safetensors" and checkpoint.path == model_dir
    _arch_matches_config(checkpoint.arch, json.loads((model_dir / "config.json").read_text()))
    assert checkpoint.tokenizer.chat_template is not None
    _assert_weights_equal_transformers(checkpoint, model_dir)


def test_qwen_specific_weights_are_present(tiny_qwen2_dir: Path, tiny_qwen3_dir: Path) -> None:
    qwen2_names = expected_weight_names(load_checkpoint(str(tiny_qwen2_dir)).arch)
    assert "model.layers.1.self_attn.k_proj.bias" in qwen2_names
    assert "model.layers.1.self_attn.o_proj.bias" not in qwen2_names
    qwen3 = load_checkpoint(str(tiny_qwen3_dir))
    shapes = dict((name, tuple(t.shape)) for name, t in qwen3.iter_weights(torch.float32))
    assert shapes["model.layers.0.self_attn.q_norm.weight"] == (32,)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (4 * 32, 64)
    assert shapes["model.layers.0.self_attn.o_proj.weight"] == (64, 4 * 32)


def test_sharded_safetensors_with_index(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="5MB")
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_llama_dir / tokenizer_file, tmp_path / tokenizer_file)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    _assert_weights_equal_transformers(load_checkpoint(str(tmp_path)), tmp_path)


def test_generation_config_eos_ids_are_merged(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_dir(tiny_llama_dir, tmp_path)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    assert load_checkpoint(str(model_dir)).arch.eos_token_ids == (0, 2)


def test_gguf_file_alone_in_a_directory_resolves(default_gguf_path: Path, tmp_path: Path) -> None:
    (tmp_path / "model.gguf").symlink_to(default_gguf_path)
    assert resolve_model_path(str(tmp_path)) == tmp_path / "model.gguf"


def _copy_dir(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def _error_for(model: str) -> str:
    with pytest.raises(ModelLoadError) as error:
        load_checkpoint(model)
    return str(error.value)


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    message = _error_for(str(missing))
    assert str(missing) in message and "no such file" in message


def test_dir_without_config_names_config_json(tmp_path: Path) -> None:
    message = _error_for(str(tmp_path))
    assert str(tmp_path / "config.json") in message


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    weights_file = tmp_path / "model.bin"
    weights_file.write_bytes(b"\0" * 16)
    assert str(weights_file) in _error_for(str(weights_file))


def test_unknown_architecture_lists_supported(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_dir(tiny_llama_dir, tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    message = _error_for(str(model_dir))
    assert str(model_dir / "config.json") in message and "GPT2LMHeadModel" in message
    assert all(name in message for name in SUPPORTED_ARCHITECTURES)


def test_malformed_config_json_names_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_dir(tiny_llama_dir, tmp_path)
    (model_dir / "config.json").write_text("{not json")
    assert str(model_dir / "config.json") in _error_for(str(model_dir))


def test_truncated_safetensors_names_the_file(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_dir(tiny_llama_dir, tmp_path)
    weights_file = model_dir / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    message = _error_for(str(model_dir))
    assert str(weights_file) in message and "safetensors" in message


def test_missing_tensor_names_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model_dir = _copy_dir(tiny_llama_dir, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    assert "model.layers.1.mlp.up_proj.weight" in _error_for(str(model_dir))


def test_garbage_gguf_names_the_file(tmp_path: Path) -> None:
    gguf_file = tmp_path / "garbage.gguf"
    gguf_file.write_bytes(b"this is not a gguf file" * 8)
    message = _error_for(str(gguf_file))
    assert str(gguf_file) in message and "GGUF" in message


def _write_gguf(path: Path, architecture: str, tensor: np.ndarray) -> None:
    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_tensor_type_names_tensor_type_and_file(tmp_path: Path) -> None:
    gguf_file = tmp_path / "int.gguf"
    _write_gguf(gguf_file, "llama", np.zeros((4, 8), dtype=np.int32))
    message = _error_for(str(gguf_file))
    assert str(gguf_file) in message and "token_embd.weight" in message and "I32" in message


def test_unsupported_gguf_architecture_names_it(tmp_path: Path) -> None:
    gguf_file = tmp_path / "gpt2.gguf"
    _write_gguf(gguf_file, "gpt2", np.zeros((4, 8), dtype=np.float32))
    message = _error_for(str(gguf_file))
    assert str(gguf_file) in message and "'gpt2'" in message


def test_gguf_metadata_and_tensors_read_as_gguf_py_reads_them(default_gguf_path: Path) -> None:
    """open_gguf's plain-view reader (start-up speed) against gguf-py's own reader on the packaged file."""
    from gguf import GGUFReader

    from yaie.models.gguf_loader import open_gguf

    ours, reference = open_gguf(default_gguf_path), GGUFReader(default_gguf_path, "r")
    assert type(ours.data) is np.ndarray and type(reference.data) is np.memmap
    assert list(ours.fields) == list(reference.fields)
    for key, field in reference.fields.items():
        expected, got = field.contents(), ours.fields[key].contents()
        assert ours.fields[key].types == field.types, key
        assert (np.array_equal(got, expected) if isinstance(expected, np.ndarray) else got == expected), key
    assert len(reference.fields["tokenizer.ggml.tokens"].contents()) == 49152
    assert [(t.name, t.tensor_type, list(t.shape)) for t in ours.tensors] == [
        (t.name, t.tensor_type, list(t.shape)) for t in reference.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(ours.tensors, reference.tensors, strict=True))
