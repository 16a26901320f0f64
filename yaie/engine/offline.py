"""Offline API: `LLM.generate` / `LLM.chat`, modelled on vLLM's so users feel at home."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from yaie.config import engine_config_from_options
from yaie.engine.engine import LLMEngine
from yaie.types import CompletionOutput, RequestOutput, SamplingParams

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """`LLM(model=None, **engine_options)`: None is the default model (SmolLM2-135M-Instruct GGUF).

    Engine options are the fields of ModelConfig/CacheConfig/SchedulerConfig/RunnerConfig, e.g.
    max_num_seqs=64, max_num_batched_tokens=512, block_size=16, num_blocks=..., policy="priority".
    """

    def __init__(self, model: str | None = None, **engine_options: Any) -> None:
        self.engine = LLMEngine(engine_config_from_options(model, **engine_options))
        self.engine.start_background_work()
        self.tokenizer = self.engine.tokenizer
        self._next_id = 0

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order, cumulative (not deltas)."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _broadcast(sampling_params or SamplingParams(), len(prompt_list))
        ids = []
        for i, (prompt, params) in enumerate(zip(prompt_list, params_list, strict=True)):
            request_id = f"offline-{self._next_id}"
            self._next_id += 1
            self.engine.add_request(request_id, prompt, params, priority=priority[i] if priority else 0)
            ids.append(request_id)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.render_chat(conv, add_generation_prompt) for conv in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def render_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
        return list(rendered)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finals: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Generating", unit="req", disable=not use_tqdm)
        while self.engine.has_unfinished_requests():
            for delta in self.engine.step():
                merged = _merge(finals.get(delta.request_id), delta)
                finals[delta.request_id] = merged
                if merged.finished:
                    bar.update(1)
        bar.close()
        return [finals[rid] for rid in request_ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if prompts and isinstance(prompts[0], int):
        return [list(prompts)]  # type: ignore[arg-type]
    return list(prompts)  # type: ignore[arg-type]


def _broadcast(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling_params for {n} prompts")
    return list(params)


def _merge(previous: RequestOutput | None, delta: RequestOutput) -> RequestOutput:
    """Accumulate a delta RequestOutput into the cumulative one."""
    if previous is None:
        previous = RequestOutput(delta.request_id, delta.prompt, delta.prompt_token_ids, [], False)
    by_index = {c.index: c for c in previous.outputs}
    for part in delta.outputs:
        acc = by_index.setdefault(part.index, CompletionOutput(part.index, "", [], logprobs=None))
        acc.text += part.text
        acc.token_ids.extend(part.token_ids)
        if part.logprobs is not None:
            acc.logprobs = (acc.logprobs or []) + part.logprobs
        acc.finish_reason, acc.stop_reason = part.finish_reason, part.stop_reason
    previous.outputs = [by_index[i] for i in sorted(by_index)]
    previous.finished = delta.finished
    previous.num_cached_tokens = delta.num_cached_tokens
    previous.metrics = delta.metrics or previous.metrics
    return previous
