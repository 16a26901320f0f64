"""Scheduler updates -> user-facing RequestOutput deltas: incremental detokenization and stop strings.

One RequestState per user request; its n samples are separate engine Requests (`child_ids`). A stop string
is found here (it needs text), so `process` also returns the child ids the scheduler must finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from yaie.engine.detokenizer import IncrementalDetokenizer
from yaie.scheduler.output import RequestUpdate
from yaie.types import (
    CompletionOutput,
    FinishReason,
    Request,
    RequestMetrics,
    RequestOutput,
    SamplingParams,
)


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    detokenizers: list[IncrementalDetokenizer]
    finish_reasons: list[str | None] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(reason is not None for reason in self.finish_reasons)


@dataclass(frozen=True)
class ProcessedStep:
    outputs: list[RequestOutput]
    stop_string_child_ids: list[str]


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        self._state_of_child: dict[str, tuple[RequestState, int]] = {}

    def add(self, request_id: str, prompt: str | None, children: list[Request]) -> None:
        params = children[0].sampling_params
        detoks = [IncrementalDetokenizer(self.tokenizer, children[0].prompt_token_ids, params) for _ in children]
        state = RequestState(request_id, prompt, children[0].prompt_token_ids, params, children, detoks,
                             [None] * len(children))
        self.states[request_id] = state
        for index, child in enumerate(children):
            self._state_of_child[child.request_id] = (state, index)

    def process(self, updates: list[RequestUpdate]) -> ProcessedStep:
        deltas: dict[str, list[CompletionOutput]] = {}
        stopped: list[str] = []
        for update in updates:
            entry = self._state_of_child.get(update.request.request_id)
            if entry is None:
                continue
            state, index = entry
            completion, hit_stop = self._apply(state, index, update)
            if hit_stop:
                stopped.append(update.request.request_id)
            deltas.setdefault(state.request_id, []).append(completion)
        outputs = [self._output(self.states[rid], completions) for rid, completions in deltas.items()]
        for out in outputs:
            if out.finished:
                self._drop(out.request_id)
        return ProcessedStep(outputs, stopped)

    def _apply(self, state: RequestState, index: int, update: RequestUpdate) -> tuple[CompletionOutput, bool]:
        detok = state.detokenizers[index]
        stop_string = detok.update(update.new_token_ids) if update.new_token_ids else None
        reason = update.finish_reason
        child = update.request
        if stop_string is not None and reason in (None, FinishReason.LENGTH):
            reason, child.stop_reason = FinishReason.STOP, stop_string
        finish = None if reason is None else reason.value
        state.finish_reasons[index] = finish
        completion = CompletionOutput(
            index=index,
            text=detok.get_delta(finished=finish is not None),
            token_ids=list(update.new_token_ids),
            finish_reason=finish,
            stop_reason=child.stop_reason if finish is not None else None,
            logprobs=list(update.new_logprobs) if state.params.logprobs is not None else None,
        )
        return completion, stop_string is not None and update.finish_reason is None

    def abort(self, request_id: str) -> RequestOutput | None:
        """Mark every unfinished sample aborted and return the final delta (None if unknown)."""
        state = self.states.get(request_id)
        if state is None:
            return None
        completions = []
        for index, reason in enumerate(state.finish_reasons):
            if reason is None:
                state.finish_reasons[index] = FinishReason.ABORT.value
                completions.append(CompletionOutput(index, "", [], FinishReason.ABORT.value))
        self._drop(request_id)
        return self._output(state, completions)

    def _output(self, state: RequestState, completions: list[CompletionOutput]) -> RequestOutput:
        finished = state.finished
        first = state.children[0]
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=completions,
            finished=finished,
            num_cached_tokens=first.num_cached_tokens or 0,
            metrics=_metrics(state.children) if finished else None,
        )

    def _drop(self, request_id: str) -> None:
        state = self.states.pop(request_id, None)
        if state is not None:
            for child in state.children:
                self._state_of_child.pop(child.request_id, None)


def _metrics(children: list[Request]) -> RequestMetrics:
    def earliest(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return min(present) if present else None

    def latest(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    return RequestMetrics(
        arrival_time=children[0].times.arrival,
        first_scheduled_time=earliest([c.times.first_scheduled for c in children]),
        first_token_time=earliest([c.times.first_token for c in children]),
        last_token_time=latest([c.times.last_token for c in children]),
        finished_time=latest([c.times.finished for c in children]),
        num_preemptions=sum(c.num_preemptions for c in children),
    )
