"""DynamicBatcher: concurrent calls merge into forward passes, split by max_batch_size and length bucket."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from yaie.embeddings.batcher import DynamicBatcher, group_by_bucket, length_bucket
from yaie.embeddings.model import mean_pool_normalize


class RecordingEmbedder:
    """Embeds an input as [len(ids), first id]; records the batches it was called with."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[list[int]]] = []
        self.delay_s = delay_s
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, batch: list[list[int]]) -> torch.Tensor:
        with self._lock:
            self.batches.append(batch)
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if self.fail:
            raise RuntimeError("forward failed")
        return torch.tensor([[float(len(ids)), float(ids[0])] for ids in batch])


def test_length_buckets() -> None:
    assert [length_bucket(n) for n in (1, 16, 17, 32, 33, 200, 512)] == [16, 16, 32, 32, 64, 256, 512]
    assert group_by_bucket([[1] * 40, [2] * 3, [3] * 20, [4] * 10, [5] * 64]) == [[1, 3], [2], [0, 4]]


async def test_concurrent_calls_share_one_forward_pass() -> None:
    embedder = RecordingEmbedder()
    batcher = DynamicBatcher(embedder, max_batch_size=64, max_wait_ms=200)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.embed([[i + 1] * 3]) for i in range(10)))
    finally:
        await batcher.close()
    assert len(embedder.batches) == 1 and len(embedder.batches[0]) == 10
    assert [r[0].tolist() for r in results] == [[3.0, float(i + 1)] for i in range(10)]
    assert (batcher.stats.num_forward_passes, batcher.stats.num_inputs) == (1, 10)


async def test_batches_are_cut_at_max_batch_size_and_split_by_bucket() -> None:
    embedder = RecordingEmbedder()
    sizes: list[int] = []
    batcher = DynamicBatcher(embedder, max_batch_size=4, max_wait_ms=200, on_batch=sizes.append)
    batcher.start()
    try:
        short = [[7] * 5 for _ in range(6)]
        results = await batcher.embed([*short, [9] * 100])
    finally:
        await batcher.close()
    # first batch: 4 short inputs; second: 2 short (bucket 16) + 1 long (bucket 128) = two passes
    assert [len(b) for b in embedder.batches] == [4, 2, 1] and sizes == [4, 2, 1]
    assert [r[0].item() for r in results] == [5.0] * 6 + [100.0]


async def test_one_request_at_a_time_when_max_batch_size_is_one() -> None:
    embedder = RecordingEmbedder()
    batcher = DynamicBatcher(embedder, max_batch_size=1, max_wait_ms=50)
    batcher.start()
    try:
        await asyncio.gather(*(batcher.embed([[i + 1]]) for i in range(5)))
    finally:
        await batcher.close()
    assert [len(b) for b in embedder.batches] == [1] * 5


async def test_cancelled_inputs_are_skipped_and_errors_reach_every_caller() -> None:
    embedder = RecordingEmbedder(delay_s=0.2)
    batcher = DynamicBatcher(embedder, max_batch_size=1, max_wait_ms=0)
    batcher.start()
    try:
        busy = asyncio.ensure_future(batcher.embed([[1]]))
        await asyncio.sleep(0.05)  # the first forward pass is running
        abandoned = asyncio.ensure_future(batcher.embed([[2]]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        await busy
        await batcher.embed([[3]])
    finally:
        await batcher.close()
    assert [b[0][0] for b in embedder.batches] == [1, 3]
    failing = DynamicBatcher(RecordingEmbedder(fail=True), max_batch_size=8, max_wait_ms=10)
    failing.start()
    try:
        outcomes = await asyncio.gather(failing.embed([[1]]), failing.embed([[2]]), return_exceptions=True)
    finally:
        await failing.close()
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_embed_before_start_raises() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        await DynamicBatcher(RecordingEmbedder(), 4, 1).embed([[1]])


def test_mean_pool_ignores_padding_and_normalizes() -> None:
    hidden = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [100.0, 100.0]]])  # [1, 3, 2]; position 2 is padding
    pooled = mean_pool_normalize(hidden, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(pooled, torch.tensor([[1.0, 0.0]]))


def test_embedding_settings() -> None:
    from yaie.server.settings import load_settings

    assert load_settings({"embedding_model": "none"}, environ={}).embedding_config() is None
    config = load_settings({"embedding_max_batch_size": "8", "embedding_max_wait_ms": "2.5"}, environ={})
    embedding = config.embedding_config()
    assert embedding is not None and embedding.model is None
    assert (embedding.max_batch_size, embedding.max_wait_ms) == (8, 2.5)
