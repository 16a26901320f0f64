"""Prefix-cache keys: each FULL block of a token sequence is named by a hash chained to its parent block's.

Two sequences share block i's key only if they agree on every token of blocks 0..i, so the longest run of
leading keys found in the block pool's hash map is a reusable computed prefix. A key keeps the block's
tokens too: equal keys need equal tokens, so a 64-bit hash collision can only alias blocks whose own tokens
match and whose parents' hashes collide. Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockHash:
    """The key of one full block: `hash_value` chains the parent's key; `token_ids` are the block's tokens."""

    hash_value: int
    token_ids: tuple[int, ...]

    def __hash__(self) -> int:
        return self.hash_value


def hash_block_tokens(parent: BlockHash | None, block_token_ids: Sequence[int]) -> BlockHash:
    """The key of a block given its parent's key (None for the first block) and its tokens."""
    token_ids = tuple(block_token_ids)
    parent_value = None if parent is None else parent.hash_value
    return BlockHash(hash((parent_value, token_ids)), token_ids)


def extend_block_hashes(block_hashes: list[BlockHash], token_ids: Sequence[int], block_size: int) -> None:
    """Append the keys of the full blocks of `token_ids` not yet in `block_hashes` (which must be the keys of
    its leading blocks). Incremental: a sequence that grows by one token costs at most one new hash."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    num_full_blocks = len(token_ids) // block_size
    for block_index in range(len(block_hashes), num_full_blocks):
        start = block_index * block_size
        parent = block_hashes[-1] if block_hashes else None
        block_hashes.append(hash_block_tokens(parent, token_ids[start:start + block_size]))


@dataclass
class PrefixCacheStats:
    """Cumulative prefix-cache lookups, in tokens: `queries_tokens` looked up, `hits_tokens` found cached."""

    queries_tokens: int = 0
    hits_tokens: int = 0

    def record(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        self.queries_tokens += num_queried_tokens
        self.hits_tokens += num_hit_tokens

    @property
    def hit_rate(self) -> float:
        return self.hits_tokens / self.queries_tokens if self.queries_tokens else 0.0
