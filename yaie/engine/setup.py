"""Engine start-up: device, dtype, threads, weights, KV-cache sizing. Logs the capacity it arrives at."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from yaie.config import CacheConfig, EngineConfig, ModelConfig, RunnerConfig, SchedulerConfig
from yaie.models.loader import load_checkpoint
from yaie.models.registry import build_model
from yaie.runner.model_runner import ModelRunner, kv_bytes_per_block
from yaie.runner.onednn_linear import use_onednn_linears
from yaie.runner.quantization import quantize_model
from yaie.runner.smoothing import smooth_for_int8

logger = logging.getLogger(__name__)

CPU_DEFAULT_KV_BYTES = 384 << 20  # float16 K/V: ~16.7k tokens of SmolLM2-135M (serving RSS < 1.5 GB)
CUDA_KV_FRACTION = 0.85
# Prompt tokens per step while streams decode, on CPU: 64-token chunks keep a 16-stream float32 decode step's
# ITL p99 under 3x its p50 (W4 in docs/benchmarks.md); CUDA steps take the whole budget.
CPU_DEFAULT_PREFILL_TOKENS = 64
CPU_BLOCK_SIZE = 64
CUDA_BLOCK_SIZE = 16


@dataclass
class EngineParts:
    tokenizer: PreTrainedTokenizerBase
    runner: ModelRunner
    num_blocks: int
    max_model_len: int
    model_name: str
    eos_token_ids: frozenset[int]
    vocab_size: int
    scheduler_config: SchedulerConfig
    cache_config: CacheConfig  # block_size resolved


def build_engine_parts(config: EngineConfig) -> EngineParts:
    started = time.monotonic()
    device = select_device(config.model)
    dtype = select_dtype(config.model, device)
    configure_threads(config.runner, device)
    checkpoint = load_checkpoint(config.model.model)
    arch = checkpoint.arch
    max_model_len = min(config.model.max_model_len or arch.max_position_embeddings, arch.max_position_embeddings)
    model = build_model(checkpoint, dtype, device)
    if config.model.quantization == "int8":
        smooth_for_int8(model, checkpoint.tokenizer)
    if config.model.quantization != "none":
        num_layers = quantize_model(model, config.model.quantization)
        logger.info("%s quantization: %d linear layers", config.model.quantization, num_layers)
    elif config.runner.onednn_linear and device.type == "cpu" and dtype == torch.float32:
        logger.info("float32 linears on oneDNN (pre-packed weights): %d layers", use_onednn_linears(model))
    cache = select_cache_config(config.cache, device)
    kv_dtype = select_kv_dtype(cache, dtype, device, config.model.quantization)
    num_blocks = plan_num_blocks(cache, model, kv_dtype, device, max_model_len)
    runner = ModelRunner(model, num_blocks, cache.block_size, device, kv_dtype, seed=config.model.seed,
                         use_cpu_kernel=config.runner.cpu_attention_kernel,
                         fused_decode_max_batch=config.runner.fused_decode_max_batch,
                         prefault_kv=cache.prefault)
    capacity = num_blocks * cache.block_size
    logger.info(
        "model %s loaded in %.1fs on %s (%s, %d threads): KV cache (%s) %d blocks x %d = %d tokens, "
        "max concurrency %.1f at %d tokens/request",
        checkpoint.path.name, time.monotonic() - started, device, str(dtype).removeprefix("torch."),
        torch.get_num_threads(), str(kv_dtype).removeprefix("torch."), num_blocks, cache.block_size,
        capacity, capacity / max_model_len,
        max_model_len,
    )
    tokenizer = checkpoint.tokenizer
    model_name = config.model.served_model_name or default_model_name(checkpoint.path)
    del checkpoint  # the GGUF reader and its memory map
    release_free_heap()
    freeze_startup_objects()
    return EngineParts(
        tokenizer=tokenizer,
        runner=runner,
        num_blocks=num_blocks,
        max_model_len=max_model_len,
        model_name=model_name,
        eos_token_ids=frozenset(arch.eos_token_ids),
        vocab_size=arch.vocab_size,
        scheduler_config=select_scheduler_config(config.scheduler, device),
        cache_config=cache,
    )


def select_cache_config(config: CacheConfig, device: torch.device) -> CacheConfig:
    """Resolve the device-dependent default: block_size None -> 64 on CPU, 16 on CUDA."""
    if config.block_size is None:
        return dataclasses.replace(config, block_size=CPU_BLOCK_SIZE if device.type == "cpu" else CUDA_BLOCK_SIZE)
    return config


def select_scheduler_config(config: SchedulerConfig, device: torch.device) -> SchedulerConfig:
    """Resolve the device-dependent default: max_num_prefill_tokens None -> 64 on CPU, no cap on CUDA."""
    if config.max_num_prefill_tokens is None and device.type == "cpu":
        return dataclasses.replace(config, max_num_prefill_tokens=CPU_DEFAULT_PREFILL_TOKENS)
    return config


def release_free_heap() -> None:
    """Give the loader's freed buffers (dequantized tensors, tokenizer conversion) back to the OS: glibc keeps
    freed heap pages resident otherwise (~40 MB for SmolLM2). A no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_startup_objects() -> None:
    """Move every object alive after start-up (modules, tokenizer, imported libraries: ~335k objects) out of the
    garbage collector's reach: they live as long as the process, and otherwise every full collection walks all
    of them again while the engine loop waits."""
    gc.collect()
    gc.freeze()


def default_model_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def select_device(config: ModelConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def select_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are far slower without native bf16), bfloat16 on CUDA."""
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, config.dtype)


def select_kv_dtype(config: CacheConfig, dtype: torch.dtype, device: torch.device, quantization: str = "none"
                    ) -> torch.dtype:
    """auto: on CPU int8 for int8 weights (the throughput scheme), else float16; the model's dtype elsewhere (see
    CacheConfig). int8 is CPU-only."""
    if config.kv_cache_dtype == "auto" and device.type == "cpu":
        return torch.int8 if quantization == "int8" else torch.float16
    if config.kv_cache_dtype == "auto":
        return dtype
    if config.kv_cache_dtype == "int8" and device.type != "cpu":
        raise ValueError("kv_cache_dtype='int8' runs on CPU only (its attention is the C kernel)")
    return getattr(torch, config.kv_cache_dtype)


def configure_threads(config: RunnerConfig, device: torch.device) -> None:
    """Default on CPU: one torch thread per core.

    Measured on the 2-core dev machine with `yaie serve` at concurrency 32 (docs/benchmarks.md): 2 threads give
    1.65x the throughput of 1 — the server's own work costs little. But when OTHER processes load the cores, a
    2-thread team waits at every op's barrier for its descheduled peer and runs 4-25x slower than 1 thread:
    on a shared machine pass `--num-threads` = free cores.
    """
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    elif device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def plan_num_blocks(
    cache: CacheConfig, model: torch.nn.Module, dtype: torch.dtype, device: torch.device, max_model_len: int
) -> int:
    """Blocks that fit the KV budget; at least enough for one request of max_model_len tokens."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = kv_bytes_per_block(model, cache.block_size, dtype)  # type: ignore[arg-type]
    budget = cache.kv_cache_memory
    if budget is None:
        budget_bytes = _free_device_bytes(device) * CUDA_KV_FRACTION if device.type == "cuda" else CPU_DEFAULT_KV_BYTES
    elif budget <= 1:
        budget_bytes = _free_device_bytes(device) * budget
    else:
        budget_bytes = budget
    num_blocks = int(budget_bytes // per_block)
    min_blocks = -(-max_model_len // cache.block_size)
    if num_blocks < min_blocks:
        raise ValueError(
            f"kv_cache_memory ({int(budget_bytes)} bytes) holds {num_blocks} blocks; one request of "
            f"max_model_len={max_model_len} tokens needs {min_blocks} ({min_blocks * per_block} bytes)"
        )
    return num_blocks


def _free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30
