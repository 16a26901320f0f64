"""BlockPool: allocation order, reference counts, the free queue as an LRU, eviction of cached blocks."""

from __future__ import annotations

import pytest

from yaie.kv_cache import BlockPool, hash_block_tokens


def ids(blocks) -> list[int]:
    return [block.block_id for block in blocks]


def test_allocates_from_the_head_in_id_order() -> None:
    pool = BlockPool(num_blocks=4)
    assert ids(pool.allocate(3)) == [0, 1, 2]
    assert pool.num_free_blocks == 1
    assert pool.free_block_ids() == [3]
    assert [b.ref_count for b in pool.blocks] == [1, 1, 1, 0]
    assert pool.usage == 0.75


def test_freed_blocks_join_the_tail_in_the_given_order() -> None:
    pool = BlockPool(num_blocks=5)
    first = pool.allocate(3)
    pool.free([first[2], first[0]])
    assert pool.free_block_ids() == [3, 4, 2, 0]
    assert ids(pool.allocate(3)) == [3, 4, 2]


def test_shared_block_is_free_only_after_the_last_reference() -> None:
    pool = BlockPool(num_blocks=2)
    [block] = pool.allocate(1)
    pool.touch([block])
    assert block.ref_count == 2
    pool.free([block])
    assert pool.num_free_blocks == 1 and block.ref_count == 1
    pool.free([block])
    assert pool.free_block_ids() == [1, 0]


def test_touch_takes_a_free_block_out_of_the_queue() -> None:
    pool = BlockPool(num_blocks=3)
    blocks = pool.allocate(3)
    pool.free(blocks)
    pool.touch([blocks[1]])
    assert pool.free_block_ids() == [0, 2]
    assert blocks[1].ref_count == 1


def test_allocating_a_cached_block_at_the_head_evicts_it() -> None:
    pool = BlockPool(num_blocks=2)
    block_0, block_1 = pool.allocate(2)
    key = hash_block_tokens(None, [7, 8])
    pool.cache_block(block_0, key)
    pool.free([block_0, block_1])
    assert pool.get_cached_block(key) is block_0  # free but still cached
    assert ids(pool.allocate(1)) == [0]
    assert pool.get_cached_block(key) is None
    assert block_0.block_hash is None and pool.num_cached_blocks == 0


def test_second_block_with_the_same_content_is_not_cached() -> None:
    pool = BlockPool(num_blocks=2)
    block_0, block_1 = pool.allocate(2)
    key = hash_block_tokens(None, [1, 2])
    pool.cache_block(block_0, key)
    pool.cache_block(block_1, key)
    assert pool.get_cached_block(key) is block_0
    assert block_1.block_hash is None


def test_caching_disabled_never_registers() -> None:
    pool = BlockPool(num_blocks=1, enable_caching=False)
    [block] = pool.allocate(1)
    key = hash_block_tokens(None, [1])
    pool.cache_block(block, key)
    assert pool.get_cached_block(key) is None


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(num_blocks=0)
    pool = BlockPool(num_blocks=1)
    with pytest.raises(ValueError, match="only 1 free"):
        pool.allocate(2)
    [block] = pool.allocate(1)
    pool.free([block])
    with pytest.raises(ValueError, match="freed more often"):
        pool.free([block])
