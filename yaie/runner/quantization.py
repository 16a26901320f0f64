"""Weight quantization applied at the runner's edge: the model code stays plain `nn.Linear`.

int8 (W8A8): weights per output channel (symmetric), activations per token at run time (dynamic, symmetric),
one int8 x int8 -> int32 matmul rescaled to float: our AVX-512 VNNI kernel (csrc/int8_gemm.c, rescale fused,
no per-call set-up) where the CPU has it, else `torch._int_mm`. The fastest scheme once a step carries many
tokens.

int4 (W4A16): weights in groups of 32 along the input dimension, asymmetric (scale and zero per group, the
layout of GGUF Q4_1, so a Q4_1 checkpoint re-quantizes exactly), activations cast to bfloat16 for torch's packed
int4 CPU kernel. Reads a quarter of fp32's weight bytes: the fastest scheme at batch 1, where decode is bound
by memory bandwidth. CPU only (torch's CUDA int4 kernel wants another packing).

int8 also quantizes the lm_head W8A8 (built from the tied embedding when there is none; the embedding table stays
float): under load the vocabulary projection is a large share of a step. Per-token int8 activations lose the
final hidden state's outlier channels, though (SmolLM2's perplexity moves from 23.76 to 24.94 with int8). int4
gives the lm_head Q8_0 blocks of 32 weights with float activations instead (`Q8BlockLinear`, a C kernel): exact
for a GGUF whose embedding is Q8_0, 4.5x less to read than float32 at batch 1 (bench/quality.py: 23.76).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from yaie.attention.cpu_kernel import VEC_MATH_SOURCE, load_c_library
from yaie.layers.norm import RMSNorm

logger = logging.getLogger(__name__)

INT8_MAX = 127.0
INT4_GROUP_SIZE = 32
INT4_MAX_LEVEL = 15  # unsigned 4-bit levels 0..15; torch's kernel subtracts 8 before scaling
Q8_BLOCK = 32
Q8_SOURCE = Path(__file__).parent / "csrc" / "q8_linear.c"
INT8_ROWS_SOURCE = Path(__file__).parent / "csrc" / "int8_rows.c"
INT8_GEMM_SOURCE = Path(__file__).parent / "csrc" / "int8_gemm.c"
# What a build of INT8_GEMM_SOURCE must hash besides it: the files it includes.
INT8_GEMM_INCLUDES = (Path(__file__).parent / "csrc" / "int8_gemm_amx.c", VEC_MATH_SOURCE)
GEMM_TILE_N = 16  # int8_gemm.c packs output channels in tiles of 16


class Int8Linear(nn.Module):
    """Drop-in for nn.Linear with int8 weights. On a CPU with AVX-512 VNNI the weights are packed once for our
    matmul (csrc/int8_gemm.c, the rescale fused in); elsewhere they are stored transposed [in, out] for
    torch._int_mm. `cpu_kernels=False` keeps the plain PyTorch expression (what CUDA runs)."""

    def __init__(self, linear: nn.Linear, cpu_kernels: bool = True) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # [out, in]
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # [out, 1]
        quantized = torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out] float32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), False)
        self.out_features, self.in_features = linear.out_features, linear.in_features
        self.input_norm: RMSNorm | None = None
        on_cpu = cpu_kernels and weight.device.type == "cpu"
        self._rows = load_int8_rows_kernel() if on_cpu else None
        self._gemm = load_int8_gemm_kernel() if on_cpu and self._rows is not None else None
        if self._gemm is not None and self.out_features % GEMM_TILE_N == 0 and self.in_features % 4 == 0:
            self.register_buffer("weight_packed", torch.empty_like(quantized))  # [out, in] in the kernel's tiles
            self.register_buffer("weight_colsum", torch.empty(self.out_features, dtype=torch.int32))  # 128 * sum
            self._gemm.yaie_i8_pack(quantized.data_ptr(), self.out_features, self.in_features,
                                    self.weight_packed.data_ptr(), self.weight_colsum.data_ptr())
            quantized = quantized[:0]
        else:
            self._gemm = None
        self.register_buffer("weight_t", quantized.t().contiguous())  # [in, out] int8 (empty when packed)

    @property
    def is_packed(self) -> bool:
        """True when the weights are in csrc/int8_gemm.c's packing (weight_packed, weight_colsum)."""
        return self._gemm is not None

    def fuse_input_norm(self, norm: RMSNorm) -> None:
        """Take over the RMSNorm whose output is this layer's only input: forward then gets the norm's input,
        and on CPU the norm runs inside the activation-quantization pass (one pass over x instead of ~7 ops)."""
        self.input_norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] float -> [T, out] float
        if self._gemm is not None:
            with torch.profiler.record_function("int8_linear"):
                return self._forward_vnni(x.float().contiguous(), self._gemm)
        if self._rows is not None and x.dtype == torch.float32:
            with torch.profiler.record_function("int8_linear"):
                return self._forward_int_mm(x.contiguous())
        if self.input_norm is not None:
            x = self.input_norm(x)
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(INT8_MAX)  # [T, 1]
        x_q = torch.round(x * x_scale.reciprocal()).to(torch.int8)  # as the C passes round it
        out = torch._int_mm(x_q, self.weight_t).float().mul_(x_scale).mul_(self.weight_scale)
        return out if self.bias is None else out.add_(self.bias)

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """[T, in] -> [T] index of each row's largest output, the first on ties: what forward(x).max(-1)
        gives, but with the packed kernel the [T, out] outputs are never written (greedy sampling through the
        lm_head)."""
        if self._gemm is None:
            return self(x).max(dim=-1).indices
        x = x.float().contiguous()
        codes, x_scale = self._quantize(x, flip=0x80)
        index = torch.empty(x.shape[0], dtype=torch.int64)
        bias = 0 if self.bias is None else self.bias.data_ptr()
        with torch.profiler.record_function("int8_linear"):
            status = self._gemm.yaie_i8_gemm_argmax(codes.data_ptr(), x_scale.data_ptr(),
                                                    self.weight_packed.data_ptr(), self.weight_colsum.data_ptr(),
                                                    self.weight_scale.data_ptr(), bias, index.data_ptr(), x.shape[0],
                                                    self.out_features, self.in_features, torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"int8 argmax kernel failed with status {status}")
        return index

    def _quantize(self, x: torch.Tensor, flip: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, in] float32 -> per-token codes [T, in] (int8, or + 128 as uint8 with flip=0x80) and scales [T]."""
        rows, num_threads = self._rows, torch.get_num_threads()
        codes = torch.empty(x.shape, dtype=torch.uint8 if flip else torch.int8)
        x_scale = torch.empty(x.shape[0])
        if self.input_norm is None:
            rows.yaie_quantize_rows(x.data_ptr(), codes.data_ptr(), x_scale.data_ptr(), x.shape[0], x.shape[1],
                                    flip, num_threads)
        else:
            rows.yaie_norm_quantize_rows(x.data_ptr(), self.input_norm.weight.data_ptr(), self.input_norm.eps,
                                         codes.data_ptr(), x_scale.data_ptr(), x.shape[0], x.shape[1], flip,
                                         num_threads)
        return codes, x_scale

    def _forward_vnni(self, x: torch.Tensor, gemm: ctypes.CDLL) -> torch.Tensor:
        codes, x_scale = self._quantize(x, flip=0x80)
        out = torch.empty(x.shape[0], self.out_features)
        bias = 0 if self.bias is None else self.bias.data_ptr()
        status = gemm.yaie_i8_gemm(codes.data_ptr(), x_scale.data_ptr(), self.weight_packed.data_ptr(),
                                   self.weight_colsum.data_ptr(), self.weight_scale.data_ptr(), bias,
                                   out.data_ptr(), self.out_features, x.shape[0], self.out_features,
                                   self.in_features, 0, torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"int8 matmul kernel failed with status {status}")
        return out

    def _forward_int_mm(self, x: torch.Tensor) -> torch.Tensor:
        """The same arithmetic with the quantize and rescale passes in C (csrc/int8_rows.c), oneDNN between."""
        codes, x_scale = self._quantize(x, flip=0)
        acc = torch._int_mm(codes, self.weight_t)  # [T, out] int32
        out = torch.empty(x.shape[0], self.out_features)
        bias = 0 if self.bias is None else self.bias.data_ptr()
        self._rows.yaie_dequantize_rows(acc.data_ptr(), x_scale.data_ptr(), self.weight_scale.data_ptr(), bias,
                                        out.data_ptr(), x.shape[0], self.out_features, torch.get_num_threads())
        return out


class Int4Linear(nn.Module):
    """Drop-in for nn.Linear with group-wise asymmetric int4 weights packed for torch's CPU int4 matmul."""

    def __init__(self, linear: nn.Linear, group_size: int = INT4_GROUP_SIZE) -> None:
        super().__init__()
        if not supports_int4(linear, group_size):
            raise ValueError(f"int4 needs in_features ({linear.in_features}) a multiple of group_size={group_size} "
                             f"and out_features ({linear.out_features}) a multiple of 8")
        weight = linear.weight.detach().float()  # [out, in]
        num_out, num_in = weight.shape
        groups = weight.reshape(num_out, num_in // group_size, group_size)  # [out, G, group]
        low = groups.amin(dim=-1, keepdim=True)
        scale = ((groups.amax(dim=-1, keepdim=True) - low) / INT4_MAX_LEVEL).clamp(min=1e-12)  # [out, G, 1]
        levels = torch.round((groups - low) / scale).clamp(0, INT4_MAX_LEVEL).to(torch.int32)
        zero = low + (INT4_MAX_LEVEL + 1) / 2 * scale  # kernel computes (level - 8) * scale + zero
        scale_zero = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [G, out, 2]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.reshape(num_out, num_in), 1)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("scale_zero", scale_zero.to(torch.bfloat16))
        # The same levels as GGUF Q4_1 blocks for the fused C decode step (runner/fused_decode.py).
        self.register_buffer("q4_blocks", q4_1_blocks(levels, scale, low))  # [out, G * 20] uint8
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), False)
        self.group_size = group_size
        self.out_features = num_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] float -> [T, out] float (bfloat16 inside the kernel)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16).contiguous(), self.weight_packed, self.group_size, self.scale_zero
        ).float()
        return out if self.bias is None else out.add_(self.bias)


def q4_1_blocks(levels: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """[out, G, 32] levels 0..15 with [out, G, 1] scale and low -> [out, G * 20] bytes of Q4_1 blocks: float16
    scale, float16 low, then 16 bytes whose byte j holds level j (low nibble) and level j + 16 (high nibble)."""
    num_out, num_groups, group_size = levels.shape
    half = group_size // 2
    nibbles = (levels[..., :half] | levels[..., half:] << 4).to(torch.uint8)  # [out, G, 16]
    scales = torch.cat([scale, low], dim=-1).to(torch.float16).view(torch.uint8)  # [out, G, 4]
    return torch.cat([scales, nibbles], dim=-1).reshape(num_out, num_groups * (4 + half)).contiguous()


class Q8BlockLinear(nn.Module):
    """Drop-in for nn.Linear (no bias) with GGUF Q8_0-style weights: blocks of 32 int8 along the input, one
    float32 scale each, float32 activations; a C kernel (csrc/q8_linear.c). A Q8_0 checkpoint tensor is held
    exactly, so logits match the float model to ~1e-6 while reading 1.1 instead of 4 bytes per weight."""

    def __init__(self, linear: nn.Linear, kernel: ctypes.CDLL) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # [out, in]
        num_out, num_in = weight.shape
        blocks = weight.reshape(num_out, num_in // Q8_BLOCK, Q8_BLOCK)  # [out, B, 32]
        scale = blocks.abs().amax(dim=-1, keepdim=True) / INT8_MAX  # [out, B, 1]
        levels = torch.round(blocks / scale.clamp(min=1e-30)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.register_buffer("weight_q", levels.reshape(num_out, num_in).contiguous())  # [out, in] int8
        self.register_buffer("weight_scale", scale.reshape(num_out, -1).contiguous())  # [out, B] float32
        self.out_features, self.in_features = num_out, num_in
        self._fn = kernel.yaie_q8_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] float32 -> [T, out] float32
        x = x.float().contiguous()
        out = x.new_empty(x.shape[0], self.out_features)
        with torch.profiler.record_function("q8_block_linear"):
            status = self._fn(x.data_ptr(), self.weight_q.data_ptr(), self.weight_scale.data_ptr(),
                              out.data_ptr(), x.shape[0], self.out_features, self.in_features,
                              torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"q8 linear kernel failed with status {status}")
        return out


@lru_cache(maxsize=1)
def load_q8_kernel() -> ctypes.CDLL | None:
    lib = load_c_library(Q8_SOURCE, "the Q8 linear kernel")
    if lib is not None:
        lib.yaie_q8_linear.restype = ctypes.c_int
        lib.yaie_q8_linear.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    return lib


@lru_cache(maxsize=1)
def load_int8_rows_kernel() -> ctypes.CDLL | None:
    lib = load_c_library(INT8_ROWS_SOURCE, "the int8 activation kernels")
    if lib is not None:
        lib.yaie_quantize_rows.restype = None
        lib.yaie_quantize_rows.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int] * 2
        lib.yaie_norm_quantize_rows.restype = None
        lib.yaie_norm_quantize_rows.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p,
                                                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                                ctypes.c_int]
        lib.yaie_dequantize_rows.restype = None
        lib.yaie_dequantize_rows.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    return lib


@lru_cache(maxsize=1)
def load_int8_gemm_kernel() -> ctypes.CDLL | None:
    """Our int8 matmul (csrc/int8_gemm.c) when this CPU has AVX-512 VNNI and it builds, else None."""
    lib = load_c_library(INT8_GEMM_SOURCE, "the int8 VNNI matmul", native=True, includes=INT8_GEMM_INCLUDES)
    if lib is None or not lib.yaie_i8_gemm_available():
        return None
    lib.yaie_i8_pack.restype = ctypes.c_int
    lib.yaie_i8_pack.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.yaie_i8_gemm.restype = ctypes.c_int
    lib.yaie_i8_gemm.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    lib.yaie_i8_gemm_argmax.restype = ctypes.c_int
    lib.yaie_i8_gemm_argmax.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    enable_amx(lib)
    return lib


def enable_amx(lib: ctypes.CDLL, on: bool = True) -> bool:
    """Switch a library that holds csrc/int8_gemm.c to AMX tiles (or back to VNNI); True when AMX is now on,
    which needs a CPU with AMX-INT8 and an OS that grants the tile state."""
    lib.yaie_i8_set_amx.restype = ctypes.c_int
    lib.yaie_i8_set_amx.argtypes = [ctypes.c_int]
    return bool(lib.yaie_i8_set_amx(int(on)))


def drop_q4_blocks(model: nn.Module) -> int:
    """Free the Q4_1 copies of int4 weights (~60 MB for SmolLM2) when no fused decode step will read them;
    returns how many were freed."""
    layers = [m for m in model.modules() if isinstance(m, Int4Linear) and m.q4_blocks.numel()]
    for layer in layers:
        layer.q4_blocks = torch.empty(0, dtype=torch.uint8, device=layer.q4_blocks.device)
    return len(layers)


def supports_int4(linear: nn.Linear, group_size: int = INT4_GROUP_SIZE) -> bool:
    return linear.in_features % group_size == 0 and linear.out_features % 8 == 0


def quantize_int8(model: nn.Module) -> int:
    """int8 for every decoder nn.Linear and the lm_head, in place; returns how many layers were replaced.
    Each decoder layer's two RMSNorms move into the int8 projection they feed (QKV, gate/up)."""
    num_replaced = replace_decoder_linears(model, Int8Linear) + _swap_lm_head(model, Int8Linear)
    for layer in getattr(model, "layers", []):
        _fuse_norm(layer, "input_layernorm", layer.self_attn.qkv_proj)
        _fuse_norm(layer, "post_attention_layernorm", layer.mlp.gate_up_proj)
    return num_replaced


def _fuse_norm(layer: nn.Module, norm_name: str, consumer: nn.Module) -> None:
    """The decoder layer feeds `norm_name`'s output only to `consumer`; an Int8Linear takes the norm over."""
    norm = getattr(layer, norm_name)
    if isinstance(consumer, Int8Linear) and isinstance(norm, RMSNorm):
        consumer.fuse_input_norm(norm)
        setattr(layer, norm_name, nn.Identity())


def quantize_int4(model: nn.Module) -> int:
    """int4 for every decoder nn.Linear whose shape the kernel takes (others int8); a Q8_0-block lm_head."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantization='int4' runs on CPU only; use 'int8' or none on CUDA")

    def to_int4(linear: nn.Linear) -> nn.Module:
        return Int4Linear(linear) if supports_int4(linear) else Int8Linear(linear)

    return replace_decoder_linears(model, to_int4) + _swap_lm_head(model, _q8_block_linear)


def quantize_model(model: nn.Module, scheme: str) -> int:
    """Apply `scheme` ('none', 'int8', 'int4'); returns how many layers were replaced."""
    if scheme == "none":
        return 0
    quantizers = {"int8": quantize_int8, "int4": quantize_int4}
    if scheme not in quantizers:
        raise ValueError(f"quantization must be 'none', 'int8' or 'int4', got {scheme!r}")
    return quantizers[scheme](model)


def replace_decoder_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every nn.Linear except the lm_head with `make(linear)`, in place; returns how many."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and name != "lm_head"
    ]
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return len(targets)


def _lm_head_linear(model: nn.Module) -> nn.Linear | None:
    """The model's lm_head as an nn.Linear (a view of the tied embedding when there is none)."""
    lm_head = getattr(model, "lm_head", None)
    if lm_head is None and hasattr(model, "embed_tokens"):
        embedding: nn.Embedding = model.embed_tokens  # type: ignore[assignment]
        lm_head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
        lm_head.weight = embedding.weight  # shared, not copied: the quantized module reads it once
    return lm_head if type(lm_head) is nn.Linear else None


def _swap_lm_head(model: nn.Module, make: Callable[[nn.Linear], nn.Module | None]) -> int:
    """Replace the lm_head (or the tied embedding's projection) with `make(lm_head)` unless that is None."""
    lm_head = _lm_head_linear(model)
    quantized = None if lm_head is None else make(lm_head)
    if quantized is None:
        return 0
    model.lm_head = quantized  # type: ignore[assignment]
    return 1


def _q8_block_linear(linear: nn.Linear) -> nn.Module | None:
    """Q8BlockLinear when the kernel built and the shape fits; None leaves the float lm_head in place."""
    kernel = load_q8_kernel()
    if kernel is None or linear.bias is not None or linear.in_features % Q8_BLOCK:
        return None
    return Q8BlockLinear(linear, kernel)
