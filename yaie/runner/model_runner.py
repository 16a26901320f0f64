"""The model runner: execute(SchedulerOutput) -> RunnerOutput.

Owns the model weights, the paged KV cache tensors and the sampler. One call = one forward pass over every
scheduled token of every request, then logits only for the rows that sample, then one batched sample.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from yaie.attention.cpu_kernel import KV_DTYPES, load_decode_kernel
from yaie.attention.kv_layout import bytes_per_slot, cache_shape
from yaie.models.llama import LlamaForCausalLM
from yaie.runner.fused_decode import KIND_Q4_1, FusedDecoder, build_fused_decoder
from yaie.runner.input_batch import StepInputs, prepare_inputs
from yaie.runner.kv_prefault import KVPrefaulter, make_kv_prefaulter
from yaie.runner.quantization import Int8Linear, drop_q4_blocks
from yaie.sampling.allowed_tokens import AllowedTokens, GrammarBitmask
from yaie.sampling.metadata import SamplingMetadata
from yaie.sampling.sampler import Sampler, SamplerOutput
from yaie.scheduler.output import RunnerOutput, SchedulerOutput
from yaie.types import TokenLogprob

logger = logging.getLogger(__name__)

# Context positions the prompt tokens of a fused step may attend in all (summed over them): beyond it, a step
# with prompt chunks takes the model's path, whose prefill attention handles a chunk's queries together. Measured
# (int8, 2 threads): a step of 16 decodes and a 64-token chunk at position ~4,000 (~256k) takes 40 ms fused
# against 74 ms on the model's path.
FUSED_MAX_PROMPT_CONTEXT = 262144


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        kv_dtype: torch.dtype,
        seed: int = 0,
        use_cpu_kernel: bool = True,
        fused_decode_max_batch: int = 0,
        prefault_kv: bool = False,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.vocab_size = model.arch.vocab_size
        self.sampler = Sampler(seed=seed)
        self.kv_caches = allocate_kv_caches(model, num_blocks, block_size, kv_dtype, device)
        # started by whoever runs the engine, once start-up is over (LLM, AsyncEngine)
        self.kv_prefaulter: KVPrefaulter | None = make_kv_prefaulter(self.kv_caches, block_size) if prefault_kv else None
        use_kernel = (use_cpu_kernel and device.type == "cpu" and kv_dtype in KV_DTYPES
                      and model.embed_tokens.weight.dtype == torch.float32)
        self.decode_kernel = load_decode_kernel() if use_kernel else None
        logger.info("decode attention: %s", "paged C kernel" if self.decode_kernel else "PyTorch gather + SDPA")
        self.fused_decoder = None
        if fused_decode_max_batch > 0 and self.decode_kernel is not None:  # it attends with the same C kernel
            self.fused_decoder = build_fused_decoder(model, self.kv_caches, block_size, fused_decode_max_batch)
        if self.fused_decoder is not None:
            kind = "int4" if self.fused_decoder.weight_kind == KIND_Q4_1 else "int8"
            logger.info("decode steps of up to %d sequences: fused %s C step", self.fused_decoder.max_batch, kind)
        else:
            drop_q4_blocks(model)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, grammar: GrammarBitmask | None = None) -> RunnerOutput:
        """One step; `grammar` holds the token masks of the constrained chunks that sample (None: none)."""
        inputs = prepare_inputs(sched, self.block_size, self.device, self.decode_kernel)
        hidden = self._forward(inputs)  # [T, H]
        sampled: list[int | None] = [None] * len(sched.chunks)
        logprobs: list[TokenLogprob | None] = [None] * len(sched.chunks)
        if not inputs.sample_chunk_indices:
            return RunnerOutput(sampled, logprobs)
        rows = hidden[inputs.logits_indices]  # [N, H]
        requests = [sched.chunks[i].request for i in inputs.sample_chunk_indices]
        allowed = None
        if grammar is not None:
            allowed = AllowedTokens.for_rows(grammar, inputs.sample_chunk_indices, self.device)
        metadata = SamplingMetadata.from_requests(requests, self.vocab_size, self.device, allowed)
        out = self._sample(rows, metadata)
        token_ids = out.token_ids.tolist()
        for row, chunk_idx in enumerate(inputs.sample_chunk_indices):
            sampled[chunk_idx] = token_ids[row]
            logprobs[chunk_idx] = out.logprobs[row]
        return RunnerOutput(sampled, logprobs)

    def _sample(self, rows: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """rows [N, H] -> tokens. A batch that is an argmax of the raw logits (greedy, no logprobs, no edits, no
        grammar) with an int8 lm_head skips the [N, V] logits: the matmul keeps each row's best column as it goes."""
        lm_head = self.model.lm_head
        plain_argmax = metadata.is_plain_greedy and metadata.allowed_tokens is None
        if plain_argmax and isinstance(lm_head, Int8Linear) and lm_head.is_packed:
            return SamplerOutput(token_ids=lm_head.argmax(rows), logprobs=[None] * metadata.num_rows)
        return self.sampler(self.model.compute_logits(rows), metadata)  # logits [N, V] float32

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        """Final hidden states [T, H]: the fused C step when it takes this step, else the model."""
        if self.fused_decoder is not None and self._fits_fused(inputs, self.fused_decoder):
            positions = inputs.positions
            return self.fused_decoder(inputs.input_ids, positions, inputs.attn.slot_mapping,
                                      inputs.token_block_table(), positions + 1)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn)

    @staticmethod
    def _fits_fused(inputs: StepInputs, fused: FusedDecoder) -> bool:
        """Up to `max_batch` tokens, and prompt tokens only while their attention stays small: the fused step
        attends each prompt token like a decode (its own pass over its context), where the model's path runs a
        chunk's queries together."""
        if inputs.input_ids.shape[0] > fused.max_batch:
            return False
        prefill = inputs.attn.prefill
        if prefill is None:
            return True
        return int(inputs.positions[inputs.attn.num_decode_tokens:].sum()) <= FUSED_MAX_PROMPT_CONTEXT


def kv_bytes_per_block(model: LlamaForCausalLM, block_size: int, kv_dtype: torch.dtype) -> int:
    arch = model.arch
    return arch.num_hidden_layers * block_size * bytes_per_slot(arch.num_key_value_heads, arch.head_dim, kv_dtype)


def allocate_kv_caches(
    model: LlamaForCausalLM, num_blocks: int, block_size: int, kv_dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """One tensor per layer in attention/kv_layout.py's layout, zeroed (masked slots must stay finite)."""
    arch = model.arch
    shape = cache_shape(num_blocks * block_size, arch.num_key_value_heads, arch.head_dim, kv_dtype)
    return [_zeros(shape, kv_dtype, device) for _ in range(arch.num_hidden_layers)]


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int8: np.int8}


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """On CPU, calloc-backed zeros (numpy): no page is mapped at allocation, so start-up does not pay for the
    whole budget; they are mapped on first write, or earlier by the background prefault (kv_prefault.py)."""
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.zeros(shape, dtype=dtype, device=device)
