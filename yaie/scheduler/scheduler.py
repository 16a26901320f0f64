"""The scheduler: requests are counters, not phases (vLLM v1's idea).

Each step `schedule()` spends one token budget (`max_num_batched_tokens`): first on RUNNING requests in order,
each given min(num_tokens - num_computed_tokens, budget left) tokens, so decodes and prefill chunks mix;
then on WAITING requests in policy order, after their prefix-cache hits. Out of blocks, the policy's victim
is preempted by recompute (blocks freed, counters reset, back to the front of the waiting queue).
`update()` takes the runner's answer: advances counters, caches the newly written full blocks, appends
sampled tokens, checks stop conditions and frees finished requests.

Calls alternate strictly: schedule() -> runner -> update(). update() is a function of the step's output: for
an empty output it only reports `timed_out_requests`, so a caller may skip it and report those itself. Never torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from yaie.config import CacheConfig, SchedulerConfig
from yaie.kv_cache import KVCacheManager
from yaie.scheduler.output import RequestUpdate, RunnerOutput, ScheduledChunk, SchedulerOutput
from yaie.scheduler.policy import make_policy
from yaie.types import FinishReason, Request, RequestStatus, TokenLogprob


@dataclass(frozen=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_queries_tokens: int
    prefix_hits_tokens: int
    num_preemptions_total: int


@dataclass
class _Step:
    """What schedule() has decided so far in one step; chunks keyed by request id, in scheduling order."""

    token_budget: int
    prefill_budget: int  # of token_budget, what chunks catching up more than one token (prompts) may take
    context_cost_len: int | None = None  # None: a prompt token costs 1 of prefill_budget wherever it starts
    chunks: dict[str, ScheduledChunk] = field(default_factory=dict)
    preempted_request_ids: list[str] = field(default_factory=list)

    def grant(self, num_uncomputed_tokens: int, start_position: int) -> int:
        """Tokens a request with `num_uncomputed_tokens` left to compute from `start_position` may compute."""
        num_tokens = min(num_uncomputed_tokens, self.token_budget)
        if num_uncomputed_tokens == 1:
            return num_tokens
        if self.prefill_budget <= 0:
            return 0
        # at least one token while any allowance is left: a prompt deep enough to cost more still advances
        return min(num_tokens, max(1, int(self.prefill_budget / self._token_cost(start_position))))

    def spend(self, num_tokens: int, start_position: int, is_prefill: bool) -> None:
        """Take a chunk's tokens from the budgets (negative: give a preempted chunk's tokens back)."""
        self.token_budget -= num_tokens
        if is_prefill:
            cost = math.ceil(abs(num_tokens) * self._token_cost(start_position))
            self.prefill_budget -= cost if num_tokens >= 0 else -cost

    def _token_cost(self, start_position: int) -> float:
        """Prefill allowance one prompt token starting at `start_position` takes: 1 + start / context_cost_len
        (its attention reads the whole context before it)."""
        return 1.0 if self.context_cost_len is None else 1.0 + start_position / self.context_cost_len


class Scheduler:
    """Continuous batching over a paged KV cache of `num_blocks` blocks.

    Invariants: a request is in exactly one of waiting / running until it finishes; running requests hold
    blocks for their computed tokens; once every request has finished, every block is free again.
    A request's sequence (prompt + output) is capped at the cache's capacity (num_blocks * block_size) as
    well as its max_model_len, so a request alone in the cache can always grow.
    """

    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        num_blocks: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = scheduler_config
        self._block_size = cache_config.block_size
        self._max_num_cached_tokens = num_blocks * cache_config.block_size
        self._clock = clock
        self._policy = make_policy(scheduler_config.policy)
        self._kv = KVCacheManager(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)
        self._waiting = self._policy.make_waiting_queue()
        self._running: list[Request] = []
        self._requests: dict[str, Request] = {}
        self._num_preemptions_total = 0

    # ----------------------------------------------------------------------------------------- queries
    @property
    def kv_cache_manager(self) -> KVCacheManager:
        return self._kv

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_queued_tokens(self) -> int:
        """Tokens the waiting requests still have to compute (their prompts; prompt + output if preempted)."""
        return sum(request.num_tokens for request in self._waiting)

    def waiting_requests(self) -> list[Request]:
        """The waiting queue in admission order (preempted requests first under fcfs)."""
        return list(self._waiting)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            kv_cache_usage=self._kv.usage,
            prefix_queries_tokens=self._kv.prefix_queries_tokens,
            prefix_hits_tokens=self._kv.prefix_hits_tokens,
            num_preemptions_total=self._num_preemptions_total,
        )

    # ------------------------------------------------------------------------------------ request entry
    def add_request(self, request: Request) -> None:
        """Queue a new request. ValueError if its id is taken, its prompt is empty, or the prompt alone
        needs more KV slots than the whole cache has."""
        if request.request_id in self._requests:
            raise ValueError(f"request_id {request.request_id!r} is already in the scheduler")
        if request.num_prompt_tokens == 0:
            raise ValueError("prompt_token_ids must not be empty")
        if request.num_prompt_tokens > self._max_num_cached_tokens:
            raise ValueError(
                f"prompt_token_ids: {request.num_prompt_tokens} tokens exceed the KV cache capacity of "
                f"{self._max_num_cached_tokens} tokens"
            )
        request.status = RequestStatus.WAITING
        self._requests[request.request_id] = request
        self._waiting.add(request)

    def finish_requests(self, request_ids: Iterable[str], reason: FinishReason) -> list[Request]:
        """Finish waiting or running requests now (abort, stop string), freeing their blocks.
        Unknown or already finished ids are ignored. Returns the requests finished."""
        finished = []
        for request_id in request_ids:
            request = self._requests.get(request_id)
            if request is not None:
                self._finish(request, reason)
                finished.append(request)
        return finished

    # ------------------------------------------------------------------------------------------ schedule
    def schedule(self) -> SchedulerOutput:
        """Decide this step's chunks. Counters are not advanced here (update() does that); a waiting request
        admitted with prefix hits starts with num_computed_tokens = its hit tokens."""
        timed_out_requests = self._expire_waiting()
        prefill_budget = self._prefill_budget()
        capped = prefill_budget < self._config.max_num_batched_tokens
        step = _Step(self._config.max_num_batched_tokens, prefill_budget,
                     self._config.prefill_context_cost_len if capped else None)
        self._schedule_running(step)
        if not step.preempted_request_ids:
            self._schedule_waiting(step)
        chunks = list(step.chunks.values())
        return SchedulerOutput(
            chunks=chunks,
            num_batched_tokens=sum(chunk.num_tokens for chunk in chunks),
            preempted_request_ids=step.preempted_request_ids,
            timed_out_requests=timed_out_requests,
        )

    def _prefill_budget(self) -> int:
        """The whole token budget, or while D running requests decode max(max_num_prefill_tokens,
        prefill_tokens_per_decode * D) of it: a long prompt advances in chunks small enough to keep the streams'
        inter-token latency, and the allowance grows with the decode work a step already carries."""
        budget = self._config.max_num_batched_tokens
        cap = self._config.max_num_prefill_tokens
        if cap is None:
            return budget
        num_decoding = sum(1 for r in self._running if r.num_tokens - r.num_computed_tokens == 1)
        if num_decoding == 0:
            return budget
        return min(max(cap, self._config.prefill_tokens_per_decode * num_decoding), budget)

    def _expire_waiting(self) -> list[Request]:
        timeout_s = self._config.queue_timeout_s
        if timeout_s is None:
            return []
        now = self._clock()
        # Only requests that never started: a preempted request has already streamed output to its client.
        expired = [
            r for r in self._waiting if r.times.first_scheduled is None and now - r.times.arrival > timeout_s
        ]
        for request in expired:
            self._finish(request, FinishReason.TIMEOUT)
        return expired

    def _schedule_running(self, step: _Step) -> None:
        for request in list(self._running):
            if step.token_budget == 0:
                return
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this step
            num_new_tokens = step.grant(request.num_tokens - request.num_computed_tokens, request.num_computed_tokens)
            if num_new_tokens < 1:
                continue
            if self._allocate_or_preempt(request, num_new_tokens, step):
                self._add_chunk(request, num_new_tokens, step)

    def _allocate_or_preempt(self, request: Request, num_new_tokens: int, step: _Step) -> bool:
        """Allocate, preempting the policy's victims until it fits; False if `request` itself was the victim
        (the requests after it may still fit in the blocks they hold)."""
        while self._kv.allocate_slots(request, num_new_tokens) is None:
            victim = self._policy.pick_victim(self._running)
            self._preempt(victim, step)
            if victim is request:
                return False
        return True

    def _schedule_waiting(self, step: _Step) -> None:
        if not self._waiting:
            return
        # Prefix-aware admission: a request whose next uncached block is being computed by another request
        # (n siblings, or clients sharing a system prompt that arrive together) waits to hit it instead.
        pending_hashes = {h for r in self._running for h in self._kv.pending_block_hashes(r)}
        for request in self._waiting:
            if step.token_budget == 0 or step.prefill_budget <= 0:
                return
            if self._kv.next_block_is_pending(request, pending_hashes):
                continue
            if len(self._running) >= self._config.max_num_seqs and not self._preempt_for(request, step):
                return
            if not self._admit(request, step):
                return
            pending_hashes.update(self._kv.pending_block_hashes(request))

    def _admit(self, request: Request, step: _Step) -> bool:
        hit_blocks, num_hit_tokens = self._kv.get_computed_blocks(request)
        num_new_tokens = step.grant(request.num_tokens - num_hit_tokens, num_hit_tokens)
        while self._kv.allocate_slots(request, num_new_tokens, hit_blocks) is None:
            if not self._preempt_for(request, step):
                return False
        self._waiting.remove(request)
        self._running.append(request)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = num_hit_tokens
        if request.num_cached_tokens is None:
            request.num_cached_tokens = num_hit_tokens
        if request.times.first_scheduled is None:
            request.times.first_scheduled = self._clock()
        self._add_chunk(request, num_new_tokens, step)
        return True

    def _preempt_for(self, request: Request, step: _Step) -> bool:
        """Preempt the policy's victim if `request` may displace it; False if it may not."""
        if not self._running:
            return False
        victim = self._policy.pick_victim(self._running)
        if not self._policy.may_preempt(request, victim):
            return False
        self._preempt(victim, step)
        return True

    def _preempt(self, victim: Request, step: _Step) -> None:
        """Preempt by recompute: free the blocks, reset the counter, requeue at the front."""
        self._running.remove(victim)
        chunk = step.chunks.pop(victim.request_id, None)
        if chunk is not None:
            step.spend(-chunk.num_tokens, chunk.start_position,
                       is_prefill=victim.num_tokens - chunk.start_position > 1)
        self._kv.free(victim)
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.PREEMPTED
        victim.num_preemptions += 1
        self._num_preemptions_total += 1
        self._waiting.add_front(victim)
        step.preempted_request_ids.append(victim.request_id)

    def _add_chunk(self, request: Request, num_new_tokens: int, step: _Step) -> None:
        start = request.num_computed_tokens
        end = start + num_new_tokens
        step.chunks[request.request_id] = ScheduledChunk(
            request=request,
            token_ids=request.all_token_ids[start:end],
            start_position=start,
            block_ids=self._kv.get_block_ids(request.request_id),
            needs_sample=end == request.num_tokens,
        )
        step.spend(num_new_tokens, start, is_prefill=request.num_tokens - start > 1)

    # -------------------------------------------------------------------------------------------- update
    def update(self, scheduler_output: SchedulerOutput, runner_output: RunnerOutput) -> list[RequestUpdate]:
        """Apply one step's results. Returns one update per request that got a token or finished."""
        chunks = scheduler_output.chunks
        if len(runner_output.sampled_token_ids) != len(chunks) or len(runner_output.logprobs) != len(chunks):
            raise ValueError(
                f"runner_output must have one entry per chunk ({len(chunks)}), got "
                f"{len(runner_output.sampled_token_ids)} sampled_token_ids, {len(runner_output.logprobs)} logprobs"
            )
        updates = [RequestUpdate(r, [], [], FinishReason.TIMEOUT) for r in scheduler_output.timed_out_requests]
        for chunk, token_id, logprob in zip(chunks, runner_output.sampled_token_ids, runner_output.logprobs,
                                            strict=True):
            if (token_id is None) == chunk.needs_sample:
                raise ValueError(
                    f"sampled_token_ids: request {chunk.request.request_id!r} needs_sample={chunk.needs_sample}"
                    f" but got {token_id!r}"
                )
            update = self._apply_chunk(chunk, token_id, logprob)
            if update is not None:
                updates.append(update)
        return updates

    def _apply_chunk(self, chunk: ScheduledChunk, token_id: int | None, logprob: TokenLogprob | None
                     ) -> RequestUpdate | None:
        request = chunk.request
        if request.is_finished:
            return None  # finished (aborted) between schedule() and update()
        request.num_computed_tokens = chunk.start_position + chunk.num_tokens
        self._kv.cache_blocks(request)
        if token_id is None:
            return None
        request.append_output_token(token_id, logprob)
        now = self._clock()
        if request.times.first_token is None:
            request.times.first_token = now
        request.times.last_token = now
        finish_reason = self._check_stop(request, token_id)
        if finish_reason is not None:
            self._finish(request, finish_reason)
        return RequestUpdate(request, [token_id], [] if logprob is None else [logprob], finish_reason)

    def _check_stop(self, request: Request, token_id: int) -> FinishReason | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if token_id in params.stop_token_ids:
                request.stop_reason = token_id
                return FinishReason.STOP
            if token_id in request.eos_token_ids and not params.ignore_eos:
                return FinishReason.STOP
        max_num_tokens = min(request.max_model_len, self._max_num_cached_tokens)
        if request.num_output_tokens >= request.max_output_tokens or request.num_tokens >= max_num_tokens:
            return FinishReason.LENGTH
        return None

    def _finish(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self._running.remove(request)
        else:
            self._waiting.remove(request)
        self._kv.free(request)
        del self._requests[request.request_id]
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.times.finished = self._clock()

    # -------------------------------------------------------------------------------------------- helpers
    def get_block_ids(self, request_id: str) -> list[int]:
        return self._kv.get_block_ids(request_id)

