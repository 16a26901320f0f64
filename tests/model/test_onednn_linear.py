"""float32 linears on oneDNN (runner/onednn_linear.py): same results as nn.Linear, swapped in by default on CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from yaie import LLM
from yaie.runner.onednn_linear import OneDNNLinear


def test_onednn_linear_matches_nn_linear() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(192, 320, bias=bias)
        packed = OneDNNLinear(linear)
        for num_tokens in (1, 7, 64):
            x = torch.randn(num_tokens, 192)
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)


def test_float32_cpu_engine_runs_its_linears_on_onednn(tiny_qwen2_dir: Path) -> None:
    model = LLM(str(tiny_qwen2_dir), num_blocks=32).engine.runner.model
    layer = model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, OneDNNLinear) and layer.self_attn.qkv_proj.bias is not None
    assert isinstance(layer.mlp.down_proj, OneDNNLinear)
    int8 = LLM(str(tiny_qwen2_dir), num_blocks=32, quantization="int8").engine.runner.model
    assert not any(isinstance(m, OneDNNLinear) for m in int8.modules())
