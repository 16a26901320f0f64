"""One prompt through the model outside the engine: a private KV cache (float32 unless asked otherwise), one
prefill chunk, the PyTorch attention path. For work beside serving that needs the model's own forward (int8 calibration, the
perplexity benchmark); the engine's cache and scheduler are never touched."""

from __future__ import annotations

import math

import torch

from yaie.models.llama import LlamaForCausalLM
from yaie.runner.input_batch import prepare_inputs
from yaie.runner.model_runner import allocate_kv_caches
from yaie.scheduler.output import ScheduledChunk, SchedulerOutput
from yaie.types import Request, SamplingParams

BLOCK_SIZE = 16


@torch.inference_mode()
def run_prompt(model: LlamaForCausalLM, token_ids: list[int], kv_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The final-normed hidden states [T, H] of `token_ids` as one sequence from position 0; the attention reads
    K/V back from a `kv_dtype` cache, so its rounding is included."""
    device = model.embed_tokens.weight.device
    num_blocks = math.ceil(len(token_ids) / BLOCK_SIZE)
    kv_caches = allocate_kv_caches(model, num_blocks, BLOCK_SIZE, kv_dtype, device)
    request = Request("standalone", list(token_ids), SamplingParams())
    chunk = ScheduledChunk(request, list(token_ids), 0, list(range(num_blocks)), needs_sample=True)
    inputs = prepare_inputs(SchedulerOutput([chunk], len(token_ids)), BLOCK_SIZE, device)
    return model(inputs.input_ids, inputs.positions, kv_caches, inputs.attn)
