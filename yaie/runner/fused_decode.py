"""A fused decode step for int4 models on CPU: every layer of a decode-only step in one C call
(csrc/fused_decode.c), which removes the per-op dispatch cost that dominates small batches.

The runner uses it for steps whose chunks are all single tokens, up to `max_batch` of them; prompt chunks and
larger batches take the PyTorch path (torch's packed int4 matmul). Both read the same Q4_1-style weights; the
fused step quantizes activations per block of 32 to int8 (as llama.cpp does for Q4_1), the PyTorch path casts
them to bfloat16, so their logits agree closely, not bit for bit.
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path

import torch

from yaie.attention.cpu_kernel import KV_DTYPES, load_c_library
from yaie.models.llama import LlamaForCausalLM
from yaie.runner.quantization import Int4Linear

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "fused_decode.c"
ATTENTION_SOURCE = Path(__file__).parents[1] / "attention" / "csrc" / "paged_attention.c"
DEFAULT_MAX_BATCH = 8
Q4_1_BLOCK_BYTES = 20  # float16 scale, float16 min, 16 bytes of 32 levels


class _Q4Weight(ctypes.Structure):
    _fields_ = [("blocks", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("n", ctypes.c_int64),
                ("k", ctypes.c_int64)]


class _LayerDesc(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("qkv", _Q4Weight), ("o", _Q4Weight), ("gate_up", _Q4Weight),
                ("down", _Q4Weight), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p)]


class _ModelDesc(ctypes.Structure):
    _fields_ = [("num_layers", ctypes.c_int64), ("hidden", ctypes.c_int64), ("num_heads", ctypes.c_int64),
                ("num_kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("intermediate", ctypes.c_int64),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("block_size", ctypes.c_int64),
                ("kv_is_f16", ctypes.c_int64), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
                ("final_norm", ctypes.c_void_p), ("layers", ctypes.POINTER(_LayerDesc))]


class FusedDecoder:
    """hidden = decoder(input_ids, positions, slot_mapping, block_table, context_lens): the final-normed hidden
    states [B, H] of B single-token sequences, their K/V written into the paged cache on the way.

    Holds raw pointers into the model's buffers and the KV cache tensors; both must outlive it unchanged.
    """

    def __init__(self, model: LlamaForCausalLM, kv_caches: list[torch.Tensor], block_size: int,
                 lib: ctypes.CDLL, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        arch = model.arch
        self.max_batch = max_batch
        self._embed = model.embed_tokens
        layers = (_LayerDesc * arch.num_hidden_layers)(
            *(_layer_desc(layer, kv_cache) for layer, kv_cache in zip(model.layers, kv_caches, strict=True))
        )
        self._desc = _ModelDesc(
            arch.num_hidden_layers, arch.hidden_size, arch.num_attention_heads, arch.num_key_value_heads,
            arch.head_dim, arch.intermediate_size, arch.rms_norm_eps, arch.head_dim**-0.5, block_size,
            int(kv_caches[0].dtype == torch.float16), model.rotary.cos_cached.data_ptr(),
            model.rotary.sin_cached.data_ptr(), model.norm.weight.data_ptr(), layers,
        )
        self._layers = layers  # the array the descriptor points into
        self._fn = lib.yaie_fused_decode

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_table: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
        # input_ids, positions, slot_mapping, context_lens: [B] int64; block_table: [B, M] int64 -> [B, H]
        hidden = self._embed(input_ids).float().contiguous()  # [B, H], overwritten in place
        block_table = block_table.contiguous()
        with torch.profiler.record_function("fused_decode_step"):
            status = self._fn(
                ctypes.byref(self._desc), hidden.data_ptr(), hidden.shape[0], positions.data_ptr(),
                slot_mapping.data_ptr(), block_table.data_ptr(), block_table.shape[1], context_lens.data_ptr(),
                torch.get_num_threads(),
            )
        if status != 0:
            raise RuntimeError(f"fused decode step failed with status {status}")
        return hidden


def build_fused_decoder(model: LlamaForCausalLM, kv_caches: list[torch.Tensor], block_size: int,
                        max_batch: int = DEFAULT_MAX_BATCH) -> FusedDecoder | None:
    """The fused decoder when the model is int4 throughout on CPU with a float32/float16 cache, else None."""
    if not _fits(model, kv_caches):
        return None
    lib = load_fused_library()
    return None if lib is None else FusedDecoder(model, kv_caches, block_size, lib, max_batch)


@lru_cache(maxsize=1)
def load_fused_library() -> ctypes.CDLL | None:
    lib = load_c_library(SOURCE, "the fused int4 decode step", native=True, includes=(ATTENTION_SOURCE,))
    if lib is not None:
        lib.yaie_fused_decode.restype = ctypes.c_int
        lib.yaie_fused_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.c_int]
    return lib


def _fits(model: LlamaForCausalLM, kv_caches: list[torch.Tensor]) -> bool:
    arch = model.arch
    if model.embed_tokens.weight.device.type != "cpu" or model.norm.weight.dtype != torch.float32:
        return False
    if kv_caches[0].dtype not in KV_DTYPES:
        return False
    if arch.num_attention_heads % arch.num_key_value_heads or arch.num_attention_heads // arch.num_key_value_heads > 16:
        return False
    linears = [m for layer in model.layers
               for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                         layer.mlp.down_proj)]
    return all(isinstance(m, Int4Linear) and m.group_size == 32 for m in linears)


def _q4(linear: Int4Linear) -> _Q4Weight:
    bias = 0 if linear.bias is None else linear.bias.data_ptr()
    num_out, num_bytes = linear.q4_blocks.shape
    return _Q4Weight(linear.q4_blocks.data_ptr(), bias, num_out, num_bytes // Q4_1_BLOCK_BYTES * 32)


def _layer_desc(layer: torch.nn.Module, kv_cache: torch.Tensor) -> _LayerDesc:
    attn, mlp = layer.self_attn, layer.mlp
    q_norm = 0 if attn.q_norm is None else attn.q_norm.weight.data_ptr()
    k_norm = 0 if attn.k_norm is None else attn.k_norm.weight.data_ptr()
    return _LayerDesc(layer.input_layernorm.weight.data_ptr(), layer.post_attention_layernorm.weight.data_ptr(),
                      q_norm, k_norm, _q4(attn.qkv_proj), _q4(attn.o_proj), _q4(mlp.gate_up_proj),
                      _q4(mlp.down_proj), kv_cache[0].data_ptr(), kv_cache[1].data_ptr())
