"""float32 linears on CPU through oneDNN with pre-packed weights, swapped in at the runner's edge.

`F.linear` on CPU calls MKL's sgemm, which on AMD CPUs takes a generic code path: on this project's AVX-512
EPYC VM it runs at ~170 GFLOP/s at decode shapes, while oneDNN's matmul on weights reordered once into its
blocked layout runs at ~400 (bench figures in docs/benchmarks.md). Same float32 arithmetic, another summation
order (relative difference ~4e-7).
"""

from __future__ import annotations

import torch
from torch import nn

from yaie.runner.quantization import replace_decoder_linears


class OneDNNLinear(nn.Module):
    """Drop-in for a float32 CPU nn.Linear; the weight is held only in oneDNN's packed layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())  # [out, in] packed
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] float32 -> [T, out] float32
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")


def use_onednn_linears(model: nn.Module) -> int:
    """Swap every nn.Linear of a float32 CPU model (the lm_head, often a view of the embedding, stays) for a
    OneDNNLinear; returns how many (0 where PyTorch was built without oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    return replace_decoder_linears(model, OneDNNLinear)
