"""The KV-cache manager: which blocks each request holds, prefix-cache lookups, and the paired verbs the
scheduler uses. Pure Python; the scheduler only ever sees `KVCacheBlocks` handles (block ids).

Life of a request's blocks:
1. `get_computed_blocks(request)` (waiting request): the longest cached prefix, capped so that at least the
   last token is recomputed (its logits are needed).
2. `allocate_slots(request, num_new_tokens, hits)`: takes a reference on the hits and allocates blocks for
   the request's computed tokens plus `num_new_tokens`; None (nothing changed) if the pool is short.
3. `cache_blocks(request)`, after the step that computed the tokens: full blocks whose KV is now written
   become hittable. Caching only written blocks means a reader scheduled in the same step as the writer can
   never see a block whose KV is not there yet, whatever order the runner writes and reads in.
4. `free(request)` (finish, abort or preemption): references dropped, last block first, so under eviction
   the tail of a sequence goes before its (more shareable) head.
"""

from __future__ import annotations

from dataclasses import dataclass

from yaie.kv_cache.block_pool import BlockPool, KVCacheBlock
from yaie.kv_cache.prefix_cache import BlockHash, PrefixCacheStats, extend_block_hashes
from yaie.types import Request


@dataclass(frozen=True)
class KVCacheBlocks:
    """A handle on some of a request's blocks, in sequence order; only ids, no pool internals."""

    block_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.block_ids)


class KVCacheManager:
    """Maps requests to blocks of `block_size` token slots in a pool of `num_blocks` blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._blocks_by_request: dict[str, list[KVCacheBlock]] = {}
        self._num_cached_blocks_by_request: dict[str, int] = {}
        self._block_hashes_by_request: dict[str, list[BlockHash]] = {}
        self._prefix_stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self._pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self._pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by requests, in [0, 1] (cached free blocks count as free)."""
        return self._pool.usage

    @property
    def prefix_queries_tokens(self) -> int:
        return self._prefix_stats.queries_tokens

    @property
    def prefix_hits_tokens(self) -> int:
        return self._prefix_stats.hits_tokens

    @property
    def pool(self) -> BlockPool:
        """The block pool, for tests and metrics; the scheduler does not use it."""
        return self._pool

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's blocks in sequence order (empty if it holds none)."""
        return [block.block_id for block in self._blocks_by_request.get(request_id, ())]

    def get_computed_blocks(self, request: Request) -> tuple[KVCacheBlocks, int]:
        """The cached blocks covering the longest computed prefix of `request.all_token_ids`, and the
        number of tokens they hold. Never covers the last token. Counts the lookup in the prefix stats."""
        if not self.enable_prefix_caching:
            return KVCacheBlocks(), 0
        block_hashes = self._block_hashes(request)
        max_num_hit_blocks = (request.num_tokens - 1) // self.block_size
        hit_block_ids: list[int] = []
        for block_hash in block_hashes[:max_num_hit_blocks]:
            block = self._pool.get_cached_block(block_hash)
            if block is None:
                break
            hit_block_ids.append(block.block_id)
        num_hit_tokens = len(hit_block_ids) * self.block_size
        self._prefix_stats.record(request.num_tokens, num_hit_tokens)
        return KVCacheBlocks(tuple(hit_block_ids)), num_hit_tokens

    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: KVCacheBlocks | None = None
    ) -> KVCacheBlocks | None:
        """Make room for `num_new_tokens` tokens after the request's computed ones (request.num_computed_tokens
        plus the tokens of `new_computed_blocks`, the hits from `get_computed_blocks`, which the request then
        holds). Returns all the request's blocks, or None, changing nothing, if the pool is short."""
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        held_blocks = self._blocks_by_request.get(request.request_id, [])
        hit_blocks = [self._pool.blocks[i] for i in (new_computed_blocks or KVCacheBlocks()).block_ids]
        if hit_blocks and (held_blocks or request.num_computed_tokens):
            raise ValueError("new_computed_blocks is only for a request with no computed tokens")
        num_tokens = request.num_computed_tokens + len(hit_blocks) * self.block_size + num_new_tokens
        num_required_blocks = -(-num_tokens // self.block_size)
        num_to_allocate = max(0, num_required_blocks - len(held_blocks) - len(hit_blocks))
        # Free hits sit in the free queue; touching them takes them out of what can be allocated.
        num_free_hits = sum(1 for block in hit_blocks if block.ref_count == 0)
        if num_to_allocate > self._pool.num_free_blocks - num_free_hits:
            return None
        self._pool.touch(hit_blocks)
        if request.request_id not in self._blocks_by_request:
            self._blocks_by_request[request.request_id] = []
            self._num_cached_blocks_by_request[request.request_id] = len(hit_blocks)
        blocks = self._blocks_by_request[request.request_id]
        blocks.extend(hit_blocks)
        blocks.extend(self._pool.allocate(num_to_allocate))
        return KVCacheBlocks(tuple(block.block_id for block in blocks))

    def cache_blocks(self, request: Request) -> None:
        """Register the request's full blocks whose tokens are all computed (KV written) in the prefix cache.
        Call after the step that advanced request.num_computed_tokens; idempotent."""
        if not self.enable_prefix_caching or request.request_id not in self._blocks_by_request:
            return
        blocks = self._blocks_by_request[request.request_id]
        num_cached = self._num_cached_blocks_by_request[request.request_id]
        num_full = min(request.num_computed_tokens // self.block_size, len(blocks))
        if num_full <= num_cached:
            return
        block_hashes = self._block_hashes(request)
        for block, block_hash in zip(blocks[num_cached:num_full], block_hashes[num_cached:num_full], strict=True):
            self._pool.cache_block(block, block_hash)
        self._num_cached_blocks_by_request[request.request_id] = num_full

    def pending_block_hashes(self, request: Request) -> list[BlockHash]:
        """Hashes of the request's full blocks that are allocated but not yet cached: their KV is being
        computed (in this step or a later one) and becomes hittable once `cache_blocks` registers it."""
        if not self.enable_prefix_caching or request.request_id not in self._blocks_by_request:
            return []
        num_held = len(self._blocks_by_request[request.request_id])
        num_cached = self._num_cached_blocks_by_request[request.request_id]
        return self._block_hashes(request)[num_cached:num_held]

    def next_block_is_pending(self, request: Request, pending_hashes: set[BlockHash]) -> bool:
        """True if the first block of `request` past its cached prefix is one another request is computing
        (its hash is in `pending_hashes`): admitting `request` now would compute that block a second time,
        while waiting a step or two turns it into a hit. Does not count as a prefix-cache query."""
        if not pending_hashes or not self.enable_prefix_caching:
            return False
        max_num_hit_blocks = (request.num_tokens - 1) // self.block_size
        for block_hash in self._block_hashes(request)[:max_num_hit_blocks]:
            if self._pool.get_cached_block(block_hash) is None:
                return block_hash in pending_hashes
        return False

    def free(self, request: Request) -> None:
        """Drop the request's references, last block first; forget its hashes. Unknown requests are ignored."""
        blocks = self._blocks_by_request.pop(request.request_id, [])
        self._pool.free(reversed(blocks))
        self._num_cached_blocks_by_request.pop(request.request_id, None)
        self._block_hashes_by_request.pop(request.request_id, None)

    def _block_hashes(self, request: Request) -> list[BlockHash]:
        block_hashes = self._block_hashes_by_request.setdefault(request.request_id, [])
        extend_block_hashes(block_hashes, request.all_token_ids, self.block_size)
        return block_hashes
