"""Weight quantization applied at the runner's edge: the model code stays plain `nn.Linear`.

int8: weights per output channel (symmetric), activations per token at run time (dynamic, symmetric), one
int8 x int8 -> int32 matmul (`torch._int_mm`, VNNI/AMX where the CPU has them), rescaled to float.
"""

from __future__ import annotations

import torch
from torch import nn

INT8_MAX = 127.0


class Int8Linear(nn.Module):
    """Drop-in for nn.Linear with int8 weights ([out, in] -> stored transposed [in, out] for _int_mm)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # [out, in]
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # [out, 1]
        quantized = torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.register_buffer("weight_t", quantized.t().contiguous())  # [in, out] int8
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out] float32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), False)
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] float -> [T, out] float
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # [T, 1]
        x_q = torch.round(x / x_scale).to(torch.int8)
        out = torch._int_mm(x_q, self.weight_t).float().mul_(x_scale).mul_(self.weight_scale)
        return out if self.bias is None else out + self.bias


def quantize_int8(model: nn.Module) -> int:
    """Replace every decoder nn.Linear (not the lm_head) with Int8Linear, in place; returns how many."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and name != "lm_head"
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child))
    return len(targets)
