"""The scheduler's contract with the model runner, and the runner's answer.

SchedulerOutput lists, for one engine step, which requests run and how many of their tokens to compute.
The runner computes KV for `token_ids` at positions [start_position, start_position + len(token_ids)),
writing into the slots named by `block_ids`, and samples one token for each chunk with `needs_sample`.
Pure Python: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yaie.types import FinishReason, Request, TokenLogprob


@dataclass(frozen=True)
class ScheduledChunk:
    """One request's share of a step.

    Invariants: token_ids == request.all_token_ids[start_position:start_position + len(token_ids)];
    len(block_ids) * block_size >= start_position + len(token_ids);
    needs_sample is True iff start_position + len(token_ids) == request.num_tokens.
    """

    request: Request
    token_ids: list[int]
    start_position: int
    block_ids: list[int]
    needs_sample: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class SchedulerOutput:
    """Everything that happens in one step. `chunks` lists running-first order, as scheduled."""

    chunks: list[ScheduledChunk]
    num_batched_tokens: int
    preempted_request_ids: list[str] = field(default_factory=list)
    timed_out_requests: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass(frozen=True)
class RunnerOutput:
    """The runner's result for a SchedulerOutput: one entry per chunk, aligned with `chunks`.

    `sampled_token_ids[i]` is None when chunk i did not need a sample (a non-final prefill chunk).
    `logprobs[i]` is set only when the chunk sampled and its request asked for logprobs.
    """

    sampled_token_ids: list[int | None]
    logprobs: list[TokenLogprob | None]


@dataclass(frozen=True)
class RequestUpdate:
    """What one step changed for one request: tokens appended (0 or 1 per step) and whether it finished."""

    request: Request
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob]
    finish_reason: FinishReason | None = None
