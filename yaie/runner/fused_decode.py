"""A fused decode step for int4 and int8 models on CPU: every layer of a decode-only step in one C call
(csrc/fused_decode.c), which removes the per-op dispatch cost that dominates small batches.

The runner uses it for steps whose chunks are all single tokens, up to `max_batch` of them; prompt chunks and
larger batches take the PyTorch path.
- int4: the same Q4_1-style weights as torch's packed int4 matmul; the fused step quantizes activations per
  block of 32 to int8 (as llama.cpp does for Q4_1), the PyTorch path casts them to bfloat16, so their logits
  agree closely, not bit for bit. Faster than the PyTorch path below ~12 sequences.
- int8 (CPUs with AVX-512 VNNI): the same packed weights and matmul kernel (csrc/int8_gemm.c) as Int8Linear,
  the same per-token activation codes up to float rounding; faster at every batch size, so its limit is at
  least `INT8_MAX_BATCH`.
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path

import torch

from yaie.attention.cpu_kernel import ATTENTION_INCLUDES, KV_DTYPES, load_c_library
from yaie.models.llama import LlamaForCausalLM
from yaie.runner.quantization import INT8_GEMM_INCLUDES, INT8_GEMM_SOURCE, Int4Linear, Int8Linear, enable_amx

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "fused_decode.c"
ATTENTION_SOURCE = Path(__file__).parents[1] / "attention" / "csrc" / "paged_attention.c"
Q4_MATMUL_SOURCE = Path(__file__).parent / "csrc" / "q4_matmul.c"  # included by SOURCE
DEFAULT_MAX_BATCH = 8
INT8_MAX_BATCH = 512  # int8 steps of up to this many tokens are fused whenever fusing is on
Q4_1_BLOCK_BYTES = 20  # float16 scale, float16 min, 16 bytes of 32 levels
KIND_Q4_1, KIND_INT8 = 0, 1  # csrc/fused_decode.c's weight kinds
PHASES = ("norms, quantization, SiLU", "matmuls", "rotary + K/V write", "attention")  # its phase order


class _Weight(ctypes.Structure):
    _fields_ = [("blocks", ctypes.c_void_p), ("packed", ctypes.c_void_p), ("wsum", ctypes.c_void_p),
                ("w_scale", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("n", ctypes.c_int64),
                ("k", ctypes.c_int64)]


class _LayerDesc(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("qkv", _Weight), ("o", _Weight), ("gate_up", _Weight),
                ("down", _Weight), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p)]


class _ModelDesc(ctypes.Structure):
    _fields_ = [("num_layers", ctypes.c_int64), ("hidden", ctypes.c_int64), ("num_heads", ctypes.c_int64),
                ("num_kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("intermediate", ctypes.c_int64),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("block_size", ctypes.c_int64),
                ("kv_type", ctypes.c_int64), ("weight_kind", ctypes.c_int64), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
                ("final_norm", ctypes.c_void_p), ("layers", ctypes.POINTER(_LayerDesc)),
                ("phase_seconds", ctypes.c_void_p)]


class FusedDecoder:
    """hidden = decoder(input_ids, positions, slot_mapping, block_table, context_lens): the final-normed hidden
    states [B, H] of B single-token sequences, their K/V written into the paged cache on the way.

    Holds raw pointers into the model's buffers and the KV cache tensors; both must outlive it unchanged.
    """

    def __init__(self, model: LlamaForCausalLM, kv_caches: list[torch.Tensor], block_size: int,
                 lib: ctypes.CDLL, weight_kind: int, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        arch = model.arch
        self.max_batch, self.weight_kind = max_batch, weight_kind
        self._embed = model.embed_tokens
        layers = (_LayerDesc * arch.num_hidden_layers)(
            *(_layer_desc(layer, kv_cache) for layer, kv_cache in zip(model.layers, kv_caches, strict=True))
        )
        self._desc = _ModelDesc(
            arch.num_hidden_layers, arch.hidden_size, arch.num_attention_heads, arch.num_key_value_heads,
            arch.head_dim, arch.intermediate_size, arch.rms_norm_eps, arch.head_dim**-0.5, block_size,
            KV_DTYPES[kv_caches[0].dtype], weight_kind, model.rotary.cos_cached.data_ptr(),
            model.rotary.sin_cached.data_ptr(), model.norm.weight.data_ptr(), layers,
        )
        self._layers = layers  # the array the descriptor points into
        self._phase_seconds: torch.Tensor | None = None
        # One scratch buffer for every step (zeroed, so its pages are mapped now rather than on a step's time).
        self._scratch = torch.zeros(lib.yaie_fused_workspace_bytes(ctypes.byref(self._desc), max_batch),
                                    dtype=torch.uint8)
        self._fn = lib.yaie_fused_decode

    def time_phases(self, enabled: bool) -> None:
        """Start (zeroed) or stop adding each phase's wall time up; see `phase_seconds`."""
        self._phase_seconds = torch.zeros(len(PHASES), dtype=torch.float64) if enabled else None
        self._desc.phase_seconds = 0 if self._phase_seconds is None else self._phase_seconds.data_ptr()

    def phase_seconds(self) -> dict[str, float]:
        """Seconds spent in each phase (PHASES) of the steps since `time_phases(True)`."""
        if self._phase_seconds is None:
            return {}
        return dict(zip(PHASES, self._phase_seconds.tolist(), strict=True))

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_table: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
        # input_ids, positions, slot_mapping, context_lens: [B] int64; block_table: [B, M] int64 -> [B, H]
        if input_ids.shape[0] > self.max_batch:
            raise ValueError(f"the fused decode step takes at most {self.max_batch} sequences")
        hidden = self._embed(input_ids).float().contiguous()  # [B, H], overwritten in place
        block_table = block_table.contiguous()
        with torch.profiler.record_function("fused_decode_step"):
            status = self._fn(
                ctypes.byref(self._desc), hidden.data_ptr(), hidden.shape[0], positions.data_ptr(),
                slot_mapping.data_ptr(), block_table.data_ptr(), block_table.shape[1], context_lens.data_ptr(),
                self._scratch.data_ptr(), self._scratch.numel(), torch.get_num_threads(),
            )
        if status != 0:
            raise RuntimeError(f"fused decode step failed with status {status}")
        return hidden


def build_fused_decoder(model: LlamaForCausalLM, kv_caches: list[torch.Tensor], block_size: int,
                        max_batch: int = DEFAULT_MAX_BATCH) -> FusedDecoder | None:
    """The fused decoder when the model is int4 (Q4_1 groups) or int8 (VNNI-packed) throughout on CPU with a
    float32/float16 cache, else None. int8 takes decode steps of up to max(max_batch, INT8_MAX_BATCH)."""
    weight_kind = _weight_kind(model, kv_caches)
    lib = None if weight_kind is None else load_fused_library()
    if lib is None or weight_kind is None:
        return None
    if weight_kind == KIND_INT8:
        max_batch = max(max_batch, INT8_MAX_BATCH)
    return FusedDecoder(model, kv_caches, block_size, lib, weight_kind, max_batch)


@lru_cache(maxsize=1)
def load_fused_library() -> ctypes.CDLL | None:
    lib = load_c_library(SOURCE, "the fused decode step", native=True,
                         includes=(ATTENTION_SOURCE, *ATTENTION_INCLUDES, INT8_GEMM_SOURCE, *INT8_GEMM_INCLUDES,
                                   Q4_MATMUL_SOURCE))
    if lib is not None:
        lib.yaie_fused_decode.restype = ctypes.c_int
        lib.yaie_fused_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        lib.yaie_fused_workspace_bytes.restype = ctypes.c_int64
        lib.yaie_fused_workspace_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        enable_amx(lib)
    return lib


def _weight_kind(model: LlamaForCausalLM, kv_caches: list[torch.Tensor]) -> int | None:
    """KIND_Q4_1 or KIND_INT8 when every decoder projection is of that kind and the rest fits the C step."""
    arch = model.arch
    if model.embed_tokens.weight.device.type != "cpu" or model.norm.weight.dtype != torch.float32:
        return None
    if kv_caches[0].dtype not in KV_DTYPES:
        return None
    if arch.num_attention_heads % arch.num_key_value_heads or arch.num_attention_heads // arch.num_key_value_heads > 16:
        return None
    linears = [m for layer in model.layers
               for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                         layer.mlp.down_proj)]
    if all(isinstance(m, Int4Linear) and m.group_size == 32 for m in linears):
        return KIND_Q4_1
    if all(isinstance(m, Int8Linear) and m.is_packed for m in linears):
        return KIND_INT8
    return None


def _weight(linear: Int4Linear | Int8Linear) -> _Weight:
    bias = 0 if linear.bias is None else linear.bias.data_ptr()
    if isinstance(linear, Int8Linear):
        return _Weight(0, linear.weight_packed.data_ptr(), linear.weight_colsum.data_ptr(),
                       linear.weight_scale.data_ptr(), bias, linear.out_features, linear.in_features)
    num_out, num_bytes = linear.q4_blocks.shape
    return _Weight(linear.q4_blocks.data_ptr(), 0, 0, 0, bias, num_out, num_bytes // Q4_1_BLOCK_BYTES * 32)


def _norm_weight(norm: torch.nn.Module, consumer: torch.nn.Module) -> int:
    """The RMSNorm weight feeding `consumer`: an int8 projection holds its norm (the layer's is an Identity)."""
    if isinstance(consumer, Int8Linear) and consumer.input_norm is not None:
        return consumer.input_norm.weight.data_ptr()
    return norm.weight.data_ptr()


def _layer_desc(layer: torch.nn.Module, kv_cache: torch.Tensor) -> _LayerDesc:
    attn, mlp = layer.self_attn, layer.mlp
    q_norm = 0 if attn.q_norm is None else attn.q_norm.weight.data_ptr()
    k_norm = 0 if attn.k_norm is None else attn.k_norm.weight.data_ptr()
    return _LayerDesc(_norm_weight(layer.input_layernorm, attn.qkv_proj),
                      _norm_weight(layer.post_attention_layernorm, mlp.gate_up_proj), q_norm, k_norm,
                      _weight(attn.qkv_proj), _weight(attn.o_proj), _weight(mlp.gate_up_proj), _weight(mlp.down_proj),
                      kv_cache[0].data_ptr(), kv_cache[1].data_ptr())
