"""`yaie bench offline`: our engine's offline throughput and, in the same run, the naive transformers baseline.

Both see the same random token-id prompts (exact input lengths, ids drawn from a range safe for the model's
vocabulary), greedy decoding and exactly `output_len` output tokens (`ignore_eos` for ours, `min_new_tokens` for
the baseline). Ours runs every request in one `LLM.generate` call, after a short unmeasured warm-up; the baseline
runs the first K of the same prompts one at a time. Tokens/s is a rate, so the two compare although K < N.
"""

from __future__ import annotations

import gc
import inspect
import time
from dataclasses import dataclass, field
from typing import Any

from yaie.bench.baseline import load_baseline_model, locate_weights, read_vocab_size, run_baseline
from yaie.bench.prompts import PromptSpec, random_token_id_prompts, safe_token_id_range
from yaie.bench.stats import ThroughputResult, speedup

EngineOption = int | float | bool | str
_WARMUP_INPUT_LEN = 16
_WARMUP_OUTPUT_LEN = 4


@dataclass(frozen=True)
class OfflineBenchConfig:
    """`model=None` is the default model. `baseline_num_prompts=None` means min(num_prompts, 8).
    `engine_options` are keyword arguments for `yaie.LLM` (e.g. max_num_seqs, num_threads)."""

    model: str | None = None
    num_prompts: int = 64
    input_len: int = 256
    output_len: int = 128
    run_baseline: bool = True
    baseline_num_prompts: int | None = None
    seed: int = 0
    warmup: bool = True
    show_progress: bool = True
    engine_options: dict[str, EngineOption] = field(default_factory=dict)

    def __post_init__(self) -> None:
        PromptSpec(self.num_prompts, self.input_len)  # validates num_prompts and input_len
        if self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, got {self.output_len}")
        if self.baseline_num_prompts is not None and self.baseline_num_prompts < 1:
            raise ValueError(f"baseline_num_prompts must be >= 1, got {self.baseline_num_prompts}")

    @property
    def num_baseline_prompts(self) -> int:
        if self.baseline_num_prompts is None:
            return min(self.num_prompts, 8)
        return min(self.baseline_num_prompts, self.num_prompts)


@dataclass(frozen=True)
class OfflineBenchResult:
    config: OfflineBenchConfig
    model_name: str
    ours: ThroughputResult
    baseline: ThroughputResult | None
    num_threads: int

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None else speedup(self.ours, self.baseline)


def run_offline_benchmark(config: OfflineBenchConfig) -> OfflineBenchResult:
    """Ours first (then freed), then the baseline, so the two never hold memory at the same time."""
    import torch

    location = locate_weights(config.model)
    token_id_range = safe_token_id_range(read_vocab_size(location))
    spec = PromptSpec(config.num_prompts, config.input_len, seed=config.seed, token_id_range=token_id_range)
    prompts = random_token_id_prompts(spec)
    ours = run_ours(config, prompts, token_id_range)
    gc.collect()
    baseline = None
    if config.run_baseline:
        model = load_baseline_model(location)
        baseline = run_baseline(model, prompts[: config.num_baseline_prompts], config.output_len,
                                show_progress=config.show_progress)
        del model
        gc.collect()
    return OfflineBenchResult(config, location.display_name, ours, baseline, torch.get_num_threads())


def run_ours(
    config: OfflineBenchConfig, prompts: list[list[int]], token_id_range: tuple[int, int]
) -> ThroughputResult:
    """All prompts through one `LLM.generate` call; only that call is timed."""
    from yaie import LLM, SamplingParams

    llm = LLM(model=config.model, **config.engine_options)
    params = SamplingParams(temperature=0.0, max_tokens=config.output_len, ignore_eos=True)
    if config.warmup:
        _warm_up(llm, token_id_range, config.seed + 1)
    start_s = time.perf_counter()
    outputs = _generate(llm, prompts, params, config.show_progress)
    elapsed_s = time.perf_counter() - start_s
    num_output_tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    expected = config.output_len * len(prompts)
    if num_output_tokens != expected:
        print(f"warning: the engine generated {num_output_tokens} tokens, expected {expected}")
    del llm
    return ThroughputResult("yaie", len(prompts), sum(len(p) for p in prompts), num_output_tokens, elapsed_s)


def _warm_up(llm: Any, token_id_range: tuple[int, int], seed: int) -> None:
    """One short request with its own random ids (so no timed prompt gets a prefix-cache hit from it)."""
    from yaie import SamplingParams

    spec = PromptSpec(1, _WARMUP_INPUT_LEN, seed=seed, token_id_range=token_id_range)
    warmup_ids = random_token_id_prompts(spec)[0]
    params = SamplingParams(temperature=0.0, max_tokens=_WARMUP_OUTPUT_LEN, ignore_eos=True)
    _generate(llm, [warmup_ids], params, show_progress=False)


def _generate(llm: Any, prompts: list[list[int]], params: Any, show_progress: bool) -> list[Any]:
    """`LLM.generate`, with its own progress bar when it offers one (`use_tqdm`)."""
    if "use_tqdm" in inspect.signature(llm.generate).parameters:
        return list(llm.generate(prompts, params, use_tqdm=show_progress))
    if show_progress:
        print(f"yaie: generating {len(prompts)} requests ...", flush=True)
    return list(llm.generate(prompts, params))
