"""Paged KV-cache bookkeeping (pure Python): block pool, prefix-cache keys, and the manager's verbs."""

from yaie.kv_cache.block_pool import BlockPool, KVCacheBlock
from yaie.kv_cache.manager import KVCacheBlocks, KVCacheManager
from yaie.kv_cache.prefix_cache import BlockHash, PrefixCacheStats, extend_block_hashes, hash_block_tokens

__all__ = [
    "BlockHash",
    "BlockPool",
    "KVCacheBlock",
    "KVCacheBlocks",
    "KVCacheManager",
    "PrefixCacheStats",
    "extend_block_hashes",
    "hash_block_tokens",
]
