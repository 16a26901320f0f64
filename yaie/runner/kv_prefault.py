"""Maps the CPU KV cache's pages ahead of use, from a background thread started once the engine serves.

The CPU cache is allocated lazily (calloc: a page is mapped when first written), so start-up stays quick. But
the first write to a page costs far more than the write, most of all on a VM whose host backs guest memory on
demand (measured on a 2-vCPU cloud VM: up to ~6.5 ms per MB, 2.5 s for the default 384 MiB), and that cost lands
inside steps, where every thread of the step waits for it. `KVPrefaulter` maps the pages instead, with
madvise(MADV_POPULATE_WRITE) (Linux 5.14+; contents are left as they are, so pages already in use are safe), a
few hundred KB per call in the order the block pool hands blocks out. It runs at normal priority: a low-priority
thread could be descheduled while the kernel holds the address-space lock for its call, and stall the engine's
own allocations behind it. Elsewhere (another OS, an older kernel, a CUDA cache) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23
BYTES_PER_CALL = 256 << 10  # per layer and K/V half: at most ~2 ms of faults on a slow VM


class KVPrefaulter:
    """Populates the pages of `kv_caches` (each [2, num_slots, ...], K then V) block range by block range."""

    def __init__(self, kv_caches: list[torch.Tensor], block_size: int) -> None:
        self._caches = [weakref.ref(cache) for cache in kv_caches]
        self._block_size = block_size
        self._num_slots = kv_caches[0].shape[1] if kv_caches else 0
        self._slot_bytes = kv_caches[0][0, 0].nbytes if kv_caches else 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="yaie-kv-prefault", daemon=True)

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self.done.is_set():
            self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            madvise = _libc_madvise()
            step = max(BYTES_PER_CALL // self._slot_bytes // self._block_size, 1) * self._block_size
            for first_slot in range(0, self._num_slots, step):
                num_slots = min(step, self._num_slots - first_slot)
                if not self._populate(madvise, first_slot, num_slots):
                    return
            logger.info("KV cache resident after %.1fs in the background", time.monotonic() - started)
        except OSError as exc:  # no MADV_POPULATE_WRITE (kernel < 5.14): pages stay mapped on first write
            logger.debug("KV cache prefault unavailable: %s", exc)
        finally:
            self.done.set()

    def _populate(self, madvise: Callable[..., int], first_slot: int, num_slots: int) -> bool:
        """Slots [first_slot, first_slot + num_slots) of every layer's K and V; False once the caches are gone."""
        for ref in self._caches:
            cache = ref()
            if cache is None:
                return False
            for half in range(2):
                start = cache.data_ptr() + (half * self._num_slots + first_slot) * self._slot_bytes
                end = start + num_slots * self._slot_bytes
                aligned = start // mmap.PAGESIZE * mmap.PAGESIZE
                if madvise(aligned, end - aligned, MADV_POPULATE_WRITE) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            del cache
        return True


def _libc_madvise() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def make_kv_prefaulter(kv_caches: list[torch.Tensor], block_size: int) -> KVPrefaulter | None:
    """A prefaulter for CPU caches on Linux (not started); None where there is nothing to do."""
    if not sys.platform.startswith("linux") or not kv_caches or kv_caches[0].device.type != "cpu":
        return None
    return KVPrefaulter(kv_caches, block_size)
