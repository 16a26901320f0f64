"""KVCacheManager: slot allocation as requests grow, failure without side effects, freeing, usage."""

from __future__ import annotations

import dataclasses

import pytest

from yaie.kv_cache import KVCacheBlocks, KVCacheManager

BLOCK_SIZE = 4


def test_allocate_slots_grows_one_block_at_a_time(make_request) -> None:
    manager = KVCacheManager(num_blocks=6, block_size=BLOCK_SIZE)
    a = make_request("a", 6)
    assert manager.allocate_slots(a, 6).block_ids == (0, 1)
    a.num_computed_tokens = 6
    a.append_output_token(42)
    assert manager.allocate_slots(a, 1).block_ids == (0, 1)  # token 7 fits in block 1
    a.num_computed_tokens = 7
    a.append_output_token(43)
    manager.allocate_slots(a, 1)
    a.num_computed_tokens = 8
    a.append_output_token(44)
    assert manager.allocate_slots(a, 1).block_ids == (0, 1, 2)  # token 9 opens block 2
    assert manager.get_block_ids("a") == [0, 1, 2]
    assert manager.num_free_blocks == 3
    assert manager.usage == 0.5


def test_chunked_allocation_counts_computed_tokens(make_request) -> None:
    manager = KVCacheManager(num_blocks=6, block_size=BLOCK_SIZE)
    a = make_request("a", 11)
    assert manager.allocate_slots(a, 3).block_ids == (0,)
    a.num_computed_tokens = 3
    assert manager.allocate_slots(a, 3).block_ids == (0, 1)
    a.num_computed_tokens = 6
    assert manager.allocate_slots(a, 5).block_ids == (0, 1, 2)


def test_short_pool_returns_none_and_changes_nothing(make_request) -> None:
    manager = KVCacheManager(num_blocks=3, block_size=BLOCK_SIZE)
    a = make_request("a", 8)
    manager.allocate_slots(a, 8)
    b = make_request("b", 8)
    assert manager.allocate_slots(b, 8) is None
    assert manager.get_block_ids("b") == []
    assert manager.num_free_blocks == 1
    assert manager.allocate_slots(b, 4).block_ids == (2,)


def test_free_returns_every_block_last_block_first(make_request) -> None:
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE)
    a = make_request("a", 12)
    manager.allocate_slots(a, 12)
    manager.free(a)
    assert manager.num_free_blocks == 4
    assert manager.pool.free_block_ids() == [3, 2, 1, 0]
    assert manager.get_block_ids("a") == []
    assert manager.usage == 0.0
    manager.free(a)  # freeing a request with no blocks is a no-op
    assert manager.num_free_blocks == 4


def test_shared_blocks_return_after_both_requests_free(make_request) -> None:
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE)
    a = make_request("a", 9)
    manager.allocate_slots(a, 9)
    a.num_computed_tokens = 9
    manager.cache_blocks(a)
    b = make_request("b", 9)
    hits, _ = manager.get_computed_blocks(b)
    assert manager.allocate_slots(b, 1, hits).block_ids == (0, 1, 3)
    manager.free(a)
    assert manager.pool.free_block_ids() == [2]
    manager.free(b)
    assert manager.pool.free_block_ids() == [2, 3, 1, 0]
    assert manager.num_free_blocks == manager.num_blocks


def test_bad_arguments_raise_value_errors(make_request) -> None:
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE)
    a = make_request("a", 8)
    with pytest.raises(ValueError, match="num_new_tokens"):
        manager.allocate_slots(a, 0)
    manager.allocate_slots(a, 4)
    a.num_computed_tokens = 4
    with pytest.raises(ValueError, match="new_computed_blocks"):
        manager.allocate_slots(a, 4, KVCacheBlocks((3,)))
    with pytest.raises(ValueError, match="block_size"):
        KVCacheManager(num_blocks=4, block_size=0)


def test_kv_cache_blocks_is_a_frozen_handle() -> None:
    handle = KVCacheBlocks((3, 1))
    assert len(handle) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        handle.block_ids = ()  # type: ignore[misc]
