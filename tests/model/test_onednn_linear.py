"""float32 linears on oneDNN (runner/onednn_linear.py): same results as nn.Linear, swapped in on request."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from yaie import LLM, SamplingParams
from yaie.runner.onednn_linear import OneDNNLinear


def test_onednn_linear_matches_nn_linear() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(192, 320, bias=bias)
        packed = OneDNNLinear(linear)
        for num_tokens in (1, 7, 64):
            x = torch.randn(num_tokens, 192)
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)


def test_onednn_linear_option_swaps_the_float32_linears(tiny_qwen2_dir: Path) -> None:
    onednn = LLM(str(tiny_qwen2_dir), num_blocks=32, onednn_linear=True)
    layer = onednn.engine.runner.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, OneDNNLinear) and layer.self_attn.qkv_proj.bias is not None
    assert isinstance(layer.mlp.down_proj, OneDNNLinear)
    plain = LLM(str(tiny_qwen2_dir), num_blocks=32)
    assert not any(isinstance(m, OneDNNLinear) for m in plain.engine.runner.model.modules())  # off by default
    int8 = LLM(str(tiny_qwen2_dir), num_blocks=32, quantization="int8", onednn_linear=True)
    assert not any(isinstance(m, OneDNNLinear) for m in int8.engine.runner.model.modules())
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [30, 31]]
    fast = [o.outputs[0].token_ids for o in onednn.generate(prompts, params, use_tqdm=False)]
    assert fast == [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
