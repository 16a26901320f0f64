"""Prefix caching: chained block keys, hits on shared prefixes with exact block ids, LRU eviction order."""

from __future__ import annotations

from yaie.kv_cache import KVCacheManager, extend_block_hashes, hash_block_tokens
from yaie.types import Request

BLOCK_SIZE = 4


def compute(manager: KVCacheManager, request: Request) -> list[int]:
    """Admit a request the way the scheduler does and mark its whole prompt computed (KV written)."""
    hits, num_hit_tokens = manager.get_computed_blocks(request)
    blocks = manager.allocate_slots(request, request.num_tokens - num_hit_tokens, hits)
    assert blocks is not None
    request.num_computed_tokens = request.num_tokens
    manager.cache_blocks(request)
    return list(blocks.block_ids)


def test_keys_chain_to_the_parent() -> None:
    first = hash_block_tokens(None, [1, 2])
    assert hash_block_tokens(None, (1, 2)) == first
    assert hash_block_tokens(first, [3, 4]) != hash_block_tokens(None, [3, 4])
    assert hash_block_tokens(first, [3, 4]).token_ids == (3, 4)


def test_block_hashes_extend_incrementally_over_full_blocks_only() -> None:
    block_hashes: list = []
    extend_block_hashes(block_hashes, [0, 1, 2, 3, 4, 5], BLOCK_SIZE)
    assert len(block_hashes) == 1
    first = block_hashes[0]
    extend_block_hashes(block_hashes, [0, 1, 2, 3, 4, 5, 6, 7, 8], BLOCK_SIZE)
    assert block_hashes[0] is first and len(block_hashes) == 2
    assert block_hashes[1] == hash_block_tokens(first, [4, 5, 6, 7])


def test_shared_prefix_hits_the_same_blocks(make_request) -> None:
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    assert compute(manager, make_request("a", 10)) == [0, 1, 2]
    b = make_request("b", [*range(8), 50, 51, 52])
    hits, num_hit_tokens = manager.get_computed_blocks(b)
    assert hits.block_ids == (0, 1) and num_hit_tokens == 8
    assert manager.allocate_slots(b, 3, hits).block_ids == (0, 1, 3)
    assert [block.ref_count for block in manager.pool.blocks[:4]] == [2, 2, 1, 1]
    assert (manager.prefix_queries_tokens, manager.prefix_hits_tokens) == (10 + 11, 8)


def test_divergent_block_stops_the_hit(make_request) -> None:
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    compute(manager, make_request("a", 12))
    b = make_request("b", [0, 1, 2, 3, 9, 5, 6, 7, 8, 9, 10, 11, 12])  # block 1 differs, block 2 equal
    hits, num_hit_tokens = manager.get_computed_blocks(b)
    assert hits.block_ids == (0,) and num_hit_tokens == 4


def test_hit_never_covers_the_last_token(make_request) -> None:
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    compute(manager, make_request("a", 12))  # blocks 0, 1, 2 all full and cached

    def hit(num_prompt_tokens: int) -> tuple[tuple[int, ...], int]:
        hits, num_hit_tokens = manager.get_computed_blocks(make_request(f"p{num_prompt_tokens}", num_prompt_tokens))
        return hits.block_ids, num_hit_tokens

    assert hit(12) == ((0, 1), 8)  # the whole prompt is cached, but its last token must be recomputed
    assert hit(13) == ((0, 1, 2), 12)
    assert hit(9) == ((0, 1), 8)
    assert hit(8) == ((0,), 4)
    assert hit(4) == ((), 0)


def test_partial_and_uncomputed_blocks_are_not_cached(make_request) -> None:
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    a = make_request("a", 10)
    manager.allocate_slots(a, 6)
    a.num_computed_tokens = 6  # only block 0 is full and written; block 1 half written
    manager.cache_blocks(a)
    assert manager.pool.num_cached_blocks == 1
    assert manager.get_computed_blocks(make_request("b", 12))[0].block_ids == (0,)


def test_freed_blocks_stay_hittable_until_evicted_tail_first(make_request) -> None:
    manager = KVCacheManager(num_blocks=3, block_size=BLOCK_SIZE)
    a = make_request("a", 12)
    assert compute(manager, a) == [0, 1, 2]
    manager.free(a)
    assert manager.pool.free_block_ids() == [2, 1, 0]  # tail of the sequence is evicted first
    other = make_request("x", [100, 101, 102])
    assert manager.allocate_slots(other, 3).block_ids == (2,)  # evicts a's last block
    again = make_request("a2", 13)
    hits, num_hit_tokens = manager.get_computed_blocks(again)
    assert hits.block_ids == (0, 1) and num_hit_tokens == 8
    assert manager.allocate_slots(again, 5, hits) is None  # needs 2 new blocks, 0 free besides the hits
    assert manager.pool.free_block_ids() == [1, 0]  # a failed allocation changes nothing


def test_least_recently_freed_request_is_evicted_first(make_request) -> None:
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE)
    a = make_request("a", 8)
    b = make_request("b", [*range(100, 108)])
    assert compute(manager, a) == [0, 1]
    assert compute(manager, b) == [2, 3]
    manager.free(a)
    manager.free(b)
    assert manager.pool.free_block_ids() == [1, 0, 3, 2]
    manager.allocate_slots(make_request("x", [7, 7, 7, 7, 7]), 5)  # takes blocks 1 and 0
    assert manager.get_computed_blocks(make_request("a2", 9))[1] == 0
    assert manager.get_computed_blocks(make_request("b2", [*range(100, 109)]))[0].block_ids == (2, 3)


def test_hit_on_a_free_cached_block_takes_it_off_the_free_queue(make_request) -> None:
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE)
    a = make_request("a", 8)
    compute(manager, a)
    manager.free(a)
    b = make_request("b", 10)
    assert compute(manager, b) == [0, 1, 2]
    assert manager.pool.free_block_ids() == [3]
    assert manager.num_free_blocks == 1


def test_disabled_prefix_caching_never_hits(make_request) -> None:
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    compute(manager, make_request("a", 12))
    assert manager.get_computed_blocks(make_request("b", 12))[1] == 0
    assert manager.prefix_queries_tokens == 0
