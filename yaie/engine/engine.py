"""LLMEngine: the synchronous core. `step()` is schedule -> execute -> update -> detokenize.

Requests enter with `add_request` (validated, tokenized, fanned out into n samples) and leave as
RequestOutput deltas from `step()`. Not thread-safe: AsyncEngine drives it from one thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from yaie.config import EngineConfig
from yaie.engine.errors import EngineOverloadedError, PromptTooLongError
from yaie.engine.output_processor import OutputProcessor
from yaie.engine.setup import EngineParts, build_engine_parts
from yaie.scheduler.output import RequestUpdate
from yaie.scheduler.scheduler import Scheduler
from yaie.structured.compiler import GrammarCompiler
from yaie.structured.manager import StructuredOutputManager
from yaie.types import (
    FinishReason,
    InvalidParameterError,
    Request,
    RequestOutput,
    RequestTimes,
    SamplingParams,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_blocks: int
    num_free_blocks: int
    block_size: int
    kv_capacity_tokens: int
    prefix_queries_tokens: int
    prefix_hits_tokens: int
    num_preemptions_total: int
    prompt_tokens_total: int
    generation_tokens_total: int


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.parts: EngineParts = build_engine_parts(config)
        self.tokenizer = self.parts.tokenizer
        self.max_model_len = self.parts.max_model_len
        self.model_name = self.parts.model_name
        self.scheduler = Scheduler(self.parts.scheduler_config, self.parts.cache_config, self.parts.num_blocks)
        self.runner = self.parts.runner
        self.output_processor = OutputProcessor(self.tokenizer)
        self.structured = StructuredOutputManager(
            GrammarCompiler(self.tokenizer, self.parts.vocab_size, self.parts.eos_token_ids))
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        """Validate and enqueue. Raises InvalidParameterError / PromptTooLongError / EngineOverloadedError."""
        if request_id in self.output_processor.states:
            raise InvalidParameterError("request_id", f"request_id {request_id!r} is already in use")
        prompt_text = prompt if isinstance(prompt, str) else None
        token_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.validate_prompt(token_ids, params)
        self.check_admission(len(token_ids) * params.n)
        if params.structured is not None:
            self.structured.compiler.compile(params.structured)  # an invalid grammar raises here
        times = RequestTimes(arrival=arrival_time if arrival_time is not None else time.monotonic())
        children = [
            Request(
                request_id=request_id if params.n == 1 else f"{request_id}#{i}",
                prompt_token_ids=token_ids,
                sampling_params=params,
                eos_token_ids=self.parts.eos_token_ids,
                max_model_len=self.max_model_len,
                priority=priority,
                group_id=request_id if params.n > 1 else None,
                sample_index=i,
                times=replace(times),
            )
            for i in range(params.n)
        ]
        self.output_processor.add(request_id, prompt_text, children)
        self._prompt_tokens_total += len(token_ids)
        for child in children:
            self.scheduler.add_request(child)
            if params.structured is not None:
                self.structured.add(child)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    def validate_prompt(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise InvalidParameterError("prompt", "prompt must not be empty")
        vocab_size = self.parts.vocab_size
        if any(not 0 <= t < vocab_size for t in token_ids):
            raise InvalidParameterError("prompt", f"prompt token ids must be in [0, {vocab_size})")
        if len(token_ids) >= self.max_model_len:
            raise PromptTooLongError(
                "input_tokens",
                f"the prompt has {len(token_ids)} tokens; this model's context window is {self.max_model_len} "
                "tokens and at least one must be left for the output",
            )
        if params.max_tokens is not None and len(token_ids) + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(
                "max_tokens",
                f"prompt ({len(token_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"window of {self.max_model_len} tokens",
            )

    def check_admission(self, num_prompt_tokens: int) -> None:
        cfg = self.config.scheduler
        if cfg.max_queued_requests is not None and self.scheduler.num_waiting >= cfg.max_queued_requests:
            raise EngineOverloadedError(f"the waiting queue is full ({cfg.max_queued_requests} requests)")
        queued = self.scheduler.num_queued_tokens
        if cfg.max_queued_tokens is not None and queued + num_prompt_tokens > cfg.max_queued_tokens:
            raise EngineOverloadedError(f"the waiting queue is full ({cfg.max_queued_tokens} prompt tokens)")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Free the request's blocks at once; returns its final (aborted) delta, or None if unknown."""
        state = self.output_processor.states.get(request_id)
        if state is None:
            return None
        self.scheduler.finish_requests([c.request_id for c in state.children], FinishReason.ABORT)
        self.structured.remove(c.request_id for c in state.children)
        return self.output_processor.abort(request_id)

    def start_background_work(self) -> None:
        """Begin work that must not slow start-up: mapping the CPU KV cache's pages (runner/kv_prefault.py)."""
        if self.runner.kv_prefaulter is not None:
            self.runner.kv_prefaulter.start()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            updates = [RequestUpdate(r, [], [], FinishReason.TIMEOUT) for r in scheduled.timed_out_requests]
        else:
            grammar = self.structured.bitmask(scheduled.chunks) if self.structured.has_requests else None
            updates = self.scheduler.update(scheduled, self.runner.execute(scheduled, grammar))
            if self.structured.has_requests:
                updates = self._advance_grammars(updates)
        processed = self.output_processor.process(updates)
        if processed.stop_string_child_ids:
            self.scheduler.finish_requests(processed.stop_string_child_ids, FinishReason.STOP)
        self._generation_tokens_total += sum(len(u.new_token_ids) for u in updates)
        return processed.outputs

    def _advance_grammars(self, updates: list[RequestUpdate]) -> list[RequestUpdate]:
        """Advance the constrained requests' matchers; a request whose grammar is complete finishes now."""
        completed = self.structured.advance(updates)
        if not completed:
            return updates
        self.scheduler.finish_requests(completed, FinishReason.STOP)
        return [replace(u, finish_reason=FinishReason.STOP) if u.request.request_id in completed else u
                for u in updates]

    def stats(self) -> EngineStats:
        s = self.scheduler.stats()
        num_blocks = self.parts.num_blocks
        return EngineStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_cache_usage=s.kv_cache_usage,
            num_blocks=num_blocks,
            num_free_blocks=self.scheduler.kv_cache_manager.num_free_blocks,
            block_size=self.parts.cache_config.block_size,
            kv_capacity_tokens=num_blocks * self.parts.cache_config.block_size,
            prefix_queries_tokens=s.prefix_queries_tokens,
            prefix_hits_tokens=s.prefix_hits_tokens,
            num_preemptions_total=s.num_preemptions_total,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
        )
