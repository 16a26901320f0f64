"""The KV prefaulter maps the CPU cache's pages in the background and leaves their contents alone."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from yaie import LLM
from yaie.runner.kv_prefault import make_kv_prefaulter

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux's")


def resident_fraction(cache: torch.Tensor) -> float:
    """Share of the tensor's pages in memory, from mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    page = os.sysconf("SC_PAGE_SIZE")
    start = cache.data_ptr() // page * page
    length = cache.data_ptr() + cache.nbytes - start
    pages = (ctypes.c_ubyte * (-(-length // page)))()
    assert libc.mincore(start, length, pages) == 0, ctypes.get_errno()
    return sum(flag & 1 for flag in pages) / len(pages)


def fresh_cache(num_slots: int) -> torch.Tensor:
    """A [2, S, Hkv, D + 4] int8 cache on a fresh anonymous mapping (no page mapped yet), as calloc gives a large
    cache; calloc itself may reuse memory a test before this one freed."""
    buffer = mmap.mmap(-1, 2 * num_slots * 2 * 68)
    return torch.from_numpy(np.frombuffer(buffer, dtype=np.int8).reshape(2, num_slots, 2, 68))


def test_prefault_maps_every_layer_and_keeps_what_was_written() -> None:
    caches = [fresh_cache(num_slots=30_000) for _ in range(4)]
    caches[3][1, 5000] = 7  # a slot already in use: V of layer 3
    caches[0][0, 0] = -2
    assert all(resident_fraction(cache) < 0.5 for cache in caches)  # mapped on first write
    prefaulter = make_kv_prefaulter(caches, block_size=16)
    assert prefaulter is not None
    prefaulter.start()
    assert prefaulter.done.wait(60)
    assert all(resident_fraction(cache) == 1.0 for cache in caches)
    assert bool((caches[3][1, 5000] == 7).all()) and bool((caches[0][0, 0] == -2).all())
    caches[3][1, 5000] = 0
    caches[0][0, 0] = 0
    assert all(int(cache.abs().sum()) == 0 for cache in caches)


def test_prefault_stops_when_the_caches_are_gone() -> None:
    caches = [fresh_cache(num_slots=1 << 16) for _ in range(4)]
    prefaulter = make_kv_prefaulter(caches, block_size=16)
    assert prefaulter is not None
    prefaulter.start()
    del caches
    assert prefaulter.done.wait(60)


def test_the_engine_prefaults_unless_told_not_to(tiny_llama_dir: Path) -> None:
    on = LLM(str(tiny_llama_dir), num_blocks=64, block_size=4).engine.runner
    assert on.kv_prefaulter is not None and on.kv_prefaulter.done.wait(60)
    off = LLM(str(tiny_llama_dir), num_blocks=64, block_size=4, prefault=False).engine.runner
    assert off.kv_prefaulter is None
