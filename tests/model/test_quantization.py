"""int8 quantization at the runner's edge: layer accuracy and a real answer from the quantized default model."""

from __future__ import annotations

import torch
from torch import nn

from yaie import LLM, SamplingParams
from yaie.runner.quantization import Int8Linear, quantize_int8


def test_int8_linear_is_close_to_float() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 384, bias=True)
    quantized = Int8Linear(linear)
    for num_tokens in (1, 7, 64):
        x = torch.randn(num_tokens, 256)
        ref = linear(x)
        rel_err = ((quantized(x) - ref).norm() / ref.norm()).item()
        assert rel_err < 0.015


def test_quantize_replaces_decoder_linears_only(tiny_llama_dir) -> None:  # type: ignore[no-untyped-def]
    llm = LLM(str(tiny_llama_dir), num_blocks=32, quantization="int8")
    model = llm.engine.runner.model
    assert quantize_int8(model) == 0  # already done at load: nothing float is left in the decoder
    assert isinstance(model.layers[0].self_attn.qkv_proj, Int8Linear)
    assert isinstance(model.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(model.lm_head, nn.Linear)


def test_int8_default_model_answers_correctly() -> None:
    llm = LLM(None, quantization="int8", max_num_seqs=4)
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"
