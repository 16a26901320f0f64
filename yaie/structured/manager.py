"""The engine's grammar state: one llguidance matcher per constrained engine request, keyed by request id.

Life of a constrained request, once per engine step:
  1. `bitmask(chunks)` before the runner: one packed mask row per constrained chunk that samples this step
     (computed in parallel by llguidance; None when no such chunk, so unconstrained steps pay nothing);
  2. the sampler masks those rows (yaie.sampling.allowed_tokens);
  3. `advance(updates)` after the scheduler's update: each matcher consumes its request's new token. Requests
     whose grammar is now complete are returned, to be finished at once ("stop"): no step is spent on an
     end-of-sequence token.
Invariant: a tracked request's matcher has consumed exactly its output_token_ids (preemption recomputes KV
but keeps the output, so the matcher is untouched). Finished requests are dropped on the next advance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import llguidance
import torch

from yaie.sampling.allowed_tokens import GrammarBitmask
from yaie.scheduler.output import RequestUpdate, ScheduledChunk
from yaie.structured.compiler import GrammarCompiler
from yaie.types import Request

logger = logging.getLogger(__name__)


@dataclass
class _Tracked:
    request: Request
    matcher: llguidance.LLMatcher


class StructuredOutputManager:
    def __init__(self, compiler: GrammarCompiler) -> None:
        self.compiler = compiler
        self._num_words = (compiler.vocab_size + 31) // 32
        self._tracked: dict[str, _Tracked] = {}
        self._executor: llguidance.LLExecutor | None = None

    @property
    def has_requests(self) -> bool:
        return bool(self._tracked)

    def add(self, request: Request) -> None:
        """Track a request whose sampling_params.structured is set (compiles its grammar if not cached)."""
        spec = request.sampling_params.structured
        if spec is None:
            raise ValueError(f"request {request.request_id!r} has no structured constraint")
        self._tracked[request.request_id] = _Tracked(request, self.compiler.new_matcher(spec))

    def remove(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self._tracked.pop(request_id, None)

    def bitmask(self, chunks: list[ScheduledChunk]) -> GrammarBitmask | None:
        """The masks of the constrained chunks that sample this step, or None when there are none."""
        chunk_indices: list[int] = []
        matchers: list[llguidance.LLMatcher] = []
        for index, chunk in enumerate(chunks):
            tracked = self._tracked.get(chunk.request.request_id) if chunk.needs_sample else None
            if tracked is not None and not tracked.matcher.is_error():
                chunk_indices.append(index)
                matchers.append(tracked.matcher)
        if not matchers:
            return None
        bitmask = torch.empty((len(matchers), self._num_words), dtype=torch.int32)  # [G, W]
        if self._executor is None:
            self._executor = llguidance.LLExecutor()
        self._executor.unsafe_compute_mask_ptr(
            [(matcher, row) for row, matcher in enumerate(matchers)], bitmask.data_ptr(),
            self._num_words * 4, len(matchers))
        return GrammarBitmask(tuple(chunk_indices), bitmask)

    def advance(self, updates: list[RequestUpdate]) -> set[str]:
        """Feed each constrained request its new tokens. Returns the ids of unfinished requests whose
        grammar is complete (or broken: a token the grammar rejected), which the engine must finish now."""
        to_finish: set[str] = set()
        for update in updates:
            tracked = self._tracked.get(update.request.request_id)
            if tracked is None or not update.new_token_ids:
                continue
            if not tracked.matcher.consume_tokens(update.new_token_ids):
                logger.warning("request %s: the grammar rejected token(s) %s: %s", update.request.request_id,
                               update.new_token_ids, tracked.matcher.get_error())
                to_finish.add(update.request.request_id)
            elif tracked.matcher.is_stopped():
                to_finish.add(update.request.request_id)
        finished = [rid for rid, t in self._tracked.items() if t.request.is_finished or rid in to_finish]
        self.remove(finished)
        finished_by_scheduler = {u.request.request_id for u in updates if u.finish_reason is not None}
        return to_finish - finished_by_scheduler
