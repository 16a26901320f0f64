"""Dynamic batching for embeddings (TorchServe / Triton style), on the asyncio event loop.

Data flow: `embed(inputs)` queues one item per input and awaits their futures. One batching task takes the
oldest waiting item, then collects more until `max_batch_size` items wait or `max_wait_ms` has passed since
that oldest item arrived. The collected items are grouped by length bucket (powers of two, at least
MIN_BUCKET_TOKENS) and each group is one forward pass, run on a worker thread and padded only to the group's
longest input, so a short input never pays for a long one. At most one forward pass runs at a time: inputs
arriving meanwhile queue up and form the next batch, which is what makes batches grow under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MIN_BUCKET_TOKENS = 16

EmbedFn = Callable[[list[list[int]]], torch.Tensor]  # token ids of B inputs -> [B, D]


@dataclass
class BatcherStats:
    """Counters since start: forward passes run and inputs embedded (inputs / passes = mean batch size)."""

    num_forward_passes: int = 0
    num_inputs: int = 0


@dataclass
class _Item:
    token_ids: list[int]
    future: asyncio.Future[torch.Tensor]  # resolves to this input's embedding [D]
    arrival_s: float = field(default_factory=time.monotonic)


def length_bucket(num_tokens: int) -> int:
    """The smallest power of two >= num_tokens, at least MIN_BUCKET_TOKENS."""
    bucket = MIN_BUCKET_TOKENS
    while bucket < num_tokens:
        bucket *= 2
    return bucket


def group_by_bucket(token_ids: list[list[int]]) -> list[list[int]]:
    """Positions of the inputs grouped by length bucket, shortest bucket first, arrival order within."""
    groups: dict[int, list[int]] = {}
    for position, ids in enumerate(token_ids):
        groups.setdefault(length_bucket(len(ids)), []).append(position)
    return [groups[bucket] for bucket in sorted(groups)]


class DynamicBatcher:
    """Merges concurrent `embed` calls into forward passes; see the module docstring.

    `on_batch(num_inputs)` is called once per forward pass (the batch-size histogram). `start()` must be
    called from the running event loop before `embed`; `close()` stops the batching task.
    """

    def __init__(self, embed_fn: EmbedFn, max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._embed_fn = embed_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="yaie-embedding-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def embed(self, inputs: list[list[int]]) -> list[torch.Tensor]:
        """One embedding [D] per input, in order. Leaving early (cancellation) drops the inputs not yet run."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the embedding batcher is not running")
        loop = asyncio.get_running_loop()
        items = [_Item(ids, loop.create_future()) for ids in inputs]
        for item in items:
            self._queue.put_nowait(item)
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                item.future.cancel()  # no-op for the done ones; the batcher skips the rest

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            for positions in group_by_bucket([item.token_ids for item in batch]):
                await self._forward([batch[p] for p in positions])

    async def _collect(self) -> list[_Item]:
        """The next batch: live items up to max_batch_size, waiting at most max_wait_s after the oldest."""
        assert self._queue is not None
        batch: list[_Item] = []
        while not batch:
            first = await self._queue.get()
            if not first.future.done():
                batch.append(first)
        deadline = batch[0].arrival_s + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if not item.future.done():
                batch.append(item)
        return batch

    async def _forward(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.future.done()]
        if not live:
            return
        try:
            embeddings = await asyncio.to_thread(self._embed_fn, [item.token_ids for item in live])  # [B, D]
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.stats.num_forward_passes += 1
        self.stats.num_inputs += len(live)
        if self._on_batch is not None:
            self._on_batch(len(live))
        for row, item in enumerate(live):
            if not item.future.done():
                item.future.set_result(embeddings[row])
