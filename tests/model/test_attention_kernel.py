"""The C paged decode-attention kernel (attention/csrc/paged_attention.c) against plain softmax attention.

Blocks are scattered at random through the cache and contexts are ragged (1 token, fewer than eight, not a
multiple of the block size), so a wrong slot, a missing tail row, a GQA head mix-up or a stale output row shows
up as a large error. Every cache type is written by attention/kv_layout.py's writer and the reference reads
the same bytes back (int8's codes and scales included). Head sizes cover the specialised 64 and 128, another
multiple of 8 (vector path) and an odd size (scalar path). With one thread the seven sequences are one task each (all kv heads of a row at once);
with two they are split per kv head, the kernel's other work split.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from yaie.attention.cpu_kernel import load_decode_kernel
from yaie.attention.kv_layout import cache_shape, read_kv, write_kv


def _reference(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor, context_lens: torch.Tensor,
               block_size: int, scale: float) -> torch.Tensor:
    num_seqs, num_heads, _ = q.shape
    group = num_heads // kv_cache.shape[2]
    out = torch.empty_like(q)
    for b in range(num_seqs):
        positions = torch.arange(int(context_lens[b]))
        slots = block_table[b, positions // block_size] * block_size + positions % block_size
        key, value = read_kv(kv_cache, slots, torch.float32)  # [L, Hkv, D], as stored
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)  # [L, Hq, D]
        weights = torch.softmax(torch.einsum("hd,lhd->hl", q[b], key) * scale, dim=-1)  # [Hq, L]
        out[b] = torch.einsum("hl,lhd->hd", weights, value)
    return out


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def num_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8],
                         ids=["f32", "f16", "bf16", "i8"])
@pytest.mark.parametrize(("head_dim", "num_heads", "num_kv_heads", "block_size"),
                         [(64, 9, 3, 16), (128, 8, 2, 16), (64, 12, 2, 8), (80, 4, 4, 5), (36, 6, 2, 16)],
                         ids=["d64-gqa3", "d128-gqa4", "d64-gqa6-bs8", "d80-mha-bs5", "d36-scalar"])
def test_matches_softmax_attention(kv_dtype: torch.dtype, head_dim: int, num_heads: int, num_kv_heads: int,
                                   block_size: int, num_threads: int) -> None:
    kernel = load_decode_kernel()
    assert kernel is not None, "the C attention kernel must build on the test machine"
    generator = torch.Generator().manual_seed(head_dim)
    context_lens = torch.tensor([1, 7, 8, 9, 37, 130, 333], dtype=torch.int64)
    max_blocks = int(context_lens.max()) // block_size + 1
    num_blocks = len(context_lens) * max_blocks + 3
    block_table = torch.randperm(num_blocks, generator=generator)[: len(context_lens) * max_blocks]
    block_table = block_table.view(len(context_lens), max_blocks).contiguous()
    num_slots = num_blocks * block_size
    kv_cache = torch.zeros(cache_shape(num_slots, num_kv_heads, head_dim, kv_dtype), dtype=kv_dtype)
    k = torch.randn(num_slots, num_kv_heads, head_dim, generator=generator)
    v = torch.randn(num_slots, num_kv_heads, head_dim, generator=generator)
    write_kv(kv_cache, torch.arange(num_slots), k, v)
    q = torch.randn(len(context_lens), num_heads, head_dim, generator=generator)
    scale = head_dim**-0.5
    got = kernel(q, kv_cache[0], kv_cache[1], block_table, context_lens, block_size, scale)
    want = _reference(q, kv_cache, block_table, context_lens, block_size, scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


DENORMAL_PROBE = """
import torch
from yaie.attention.cpu_kernel import load_decode_kernel
from yaie.runner.fused_decode import load_fused_library
from yaie.runner.quantization import load_int8_gemm_kernel, load_int8_rows_kernel, load_q8_kernel
libraries = [load_decode_kernel(), load_fused_library(), load_int8_rows_kernel(), load_q8_kernel()]
assert all(library is not None for library in libraries), libraries
load_int8_gemm_kernel()  # None without AVX-512 VNNI; loaded (and so probed) where the CPU has it
print((torch.tensor([1e-39]) * 2).item())
"""


def test_loading_the_kernels_keeps_denormals() -> None:
    """The kernels are compiled with -ffast-math but must not switch the host process to flush-to-zero (which
    linking with -ffast-math does through crtfastmath.o): every torch op after loading them would change."""
    result = subprocess.run([sys.executable, "-c", DENORMAL_PROBE], capture_output=True, text=True, timeout=300,
                            check=True)
    doubled_denormal = float(result.stdout.strip().splitlines()[-1])
    assert doubled_denormal == pytest.approx(2e-39, rel=1e-3, abs=0)  # 0.0 under flush-to-zero
