"""A fixed pool of KV-cache blocks: reference counts, a free queue that doubles as the prefix cache's LRU,
and the block-hash -> block map. Pure Python.

Invariants:
- every block is either in use (ref_count > 0) or in the free queue (ref_count == 0), never both;
- a free block may still be cached (it keeps its hash) until it reaches the head of the free queue and is
  handed out again, which evicts it (its hash mapping is dropped);
- freed blocks join the tail, allocation takes from the head, so the least recently freed block goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from yaie.kv_cache.prefix_cache import BlockHash


@dataclass(slots=True, eq=False)
class KVCacheBlock:
    """One block's bookkeeping. `block_hash` is set while the block is registered in the prefix cache."""

    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None


class BlockPool:
    """Blocks 0..num_blocks-1, all free at start, queued in id order. All operations are O(1) per block."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(block_id) for block_id in range(num_blocks)]
        # Ordered head (next to hand out) -> tail (most recently freed); values unused.
        self._free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached_block_ids: dict[BlockHash, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ref_count 0, cached or not: all of them can be handed out."""
        return len(self._free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (ref_count > 0), in [0, 1]."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached_block_ids)

    def free_block_ids(self) -> list[int]:
        """The free queue, head (next to be handed out / evicted) first. For tests and debugging."""
        return list(self._free_queue)

    def allocate(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take `num_blocks` blocks from the head of the free queue (evicting cached ones), ref_count 1."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"cannot allocate {num_blocks} blocks: only {self.num_free_blocks} free")
        allocated = []
        for _ in range(num_blocks):
            block_id, _ = self._free_queue.popitem(last=False)
            block = self.blocks[block_id]
            self._evict(block)
            block.ref_count = 1
            allocated.append(block)
        return allocated

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take one more reference on each block (a prefix hit); a free one leaves the free queue."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free_queue[block.block_id]
            block.ref_count += 1

    def free(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference on each block, in the given order; blocks reaching 0 join the queue's tail."""
        for block in blocks:
            if block.ref_count <= 0:
                raise ValueError(f"block {block.block_id} freed more often than referenced")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free_queue[block.block_id] = None

    def cache_block(self, block: KVCacheBlock, block_hash: BlockHash) -> None:
        """Register a computed full block under its hash. A block already cached, or a hash already held by
        another block (the same content computed twice), is left as it is."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self._cached_block_ids:
            return
        block.block_hash = block_hash
        self._cached_block_ids[block_hash] = block.block_id

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        block_id = self._cached_block_ids.get(block_hash)
        return None if block_id is None else self.blocks[block_id]

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is None:
            return
        del self._cached_block_ids[block.block_hash]
        block.block_hash = None
