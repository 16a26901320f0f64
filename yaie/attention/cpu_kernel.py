"""Build and call the C paged-decode-attention kernel (csrc/paged_attention.c) on CPU: float32 queries, a float32,
float16, bfloat16 or int8 K/V cache (attention/kv_layout.py).

Built once with the system C compiler for this CPU (-march=native: ~10% faster than an AVX2 build, from the
larger register file) into ~/.cache/yaie/kernels (keyed by the source's hash and the CPU's flags) and loaded with
ctypes, so it needs no PyTorch headers and builds in about a second. `load_decode_kernel()` returns None when no
compiler is present or the build fails; callers then use the PyTorch reference path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_attention.c"
VEC_MATH_SOURCE = Path(__file__).parent / "csrc" / "vec_math.h"  # included by SOURCE and the runner's kernels
# What a build of SOURCE must hash besides it: the files it includes.
ATTENTION_INCLUDES = (VEC_MATH_SOURCE, Path(__file__).parent / "csrc" / "attention_avx512.c")
# Cache element types the kernels read, as their kv_type codes (KV_F32, KV_F16, KV_BF16, KV_I8 in the C source;
# int8 in attention/kv_layout.py's layout).
KV_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int8: 3}
CFLAGS = ["-O3", "-march=x86-64-v3", "-ffast-math", "-fopenmp", "-fPIC"]
NATIVE_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
# Linked in a separate step without -ffast-math: linking with it adds crtfastmath.o, whose constructor turns on
# flush-to-zero / denormals-are-zero for the whole process that loads the library (every torch op included).
LDFLAGS = ["-shared", "-fopenmp"]


class DecodeKernel:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = lib.yaie_paged_decode_attention
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        context_lens: torch.Tensor,
        block_size: int,
        scale: float,
    ) -> torch.Tensor:
        # q: [B, Hq, D] float32 contiguous; k_cache, v_cache: [S, Hkv, D] float32, float16 or bfloat16, or
        # [S, Hkv, D + 4] int8 (kv_layout);
        # block_table: [B, M] int64; context_lens: [B] int64 -> out: [B, Hq, D] float32
        if k_cache.dtype not in KV_DTYPES:
            raise ValueError(f"the paged decode kernel reads float32, float16, bfloat16 or int8 K/V, got {k_cache.dtype}")
        num_seqs, num_heads, head_dim = q.shape
        out = torch.empty_like(q)
        status = self._fn(
            q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_table.data_ptr(),
            context_lens.data_ptr(), out.data_ptr(), num_seqs, num_heads, k_cache.shape[1], head_dim,
            block_size, block_table.shape[1], scale,
            torch.get_num_threads(), KV_DTYPES[k_cache.dtype],
        )
        if status != 0:
            raise RuntimeError(f"paged decode attention kernel failed with status {status}")
        return out


@lru_cache(maxsize=1)
def load_decode_kernel() -> DecodeKernel | None:
    lib = load_c_library(SOURCE, "the CPU attention kernel", native=True, includes=ATTENTION_INCLUDES)
    return None if lib is None else DecodeKernel(lib)


def load_c_library(source: Path, what: str, *, native: bool = False, includes: tuple[Path, ...] = ()
                   ) -> ctypes.CDLL | None:
    """Build `source` once (cached by the hash of its text, the files it `includes` and the flags) and load it;
    None, with a warning, when that is not possible (no compiler, a failed build, or YAIE_DISABLE_CPU_KERNEL=1):
    callers fall back to PyTorch. `native` builds for this CPU's own instruction set (the cache key then holds
    the CPU's feature flags, so a shared cache never hands one machine another's build)."""
    if os.environ.get("YAIE_DISABLE_CPU_KERNEL") == "1":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: %s falls back to PyTorch (slower)", what)
        return None
    try:
        flags = [*NATIVE_CFLAGS, f"-DYAIE_CPU={_cpu_signature()}"] if native else CFLAGS
        return ctypes.CDLL(str(_build(compiler, source, flags, includes)))
    except (OSError, subprocess.CalledProcessError) as exc:
        logger.warning("building %s failed (%s): falling back to PyTorch", what, exc)
        return None


def _cpu_signature() -> str:
    """A short hash of this CPU's model and feature flags (Linux /proc/cpuinfo; the machine type elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text = "".join(line for line in lines if line.startswith(("flags", "model name")))
    except OSError:
        text = ""
    return hashlib.sha256((text or os.uname().machine).encode()).hexdigest()[:12]


def _build(compiler: str, source_path: Path, flags: list[str], includes: tuple[Path, ...]) -> Path:
    text = source_path.read_bytes() + b"".join(path.read_bytes() for path in includes)
    digest = hashlib.sha256(text + " ".join([*flags, *LDFLAGS]).encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("YAIE_CACHE_DIR", Path.home() / ".cache" / "yaie")) / "kernels"
    target = cache_dir / f"{source_path.stem}_{digest}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        built, obj = Path(tmp) / target.name, Path(tmp) / f"{source_path.stem}.o"
        subprocess.run([compiler, *flags, "-c", str(source_path), "-o", str(obj)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([compiler, *LDFLAGS, str(obj), "-o", str(built), "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(built, target)  # atomic: concurrent builders never load a half-written file
    return target
