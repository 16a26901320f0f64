"""The fused int4 decode step (runner/fused_decode.py + csrc/fused_decode.c) against a PyTorch reference.

The reference is the same model with every int4 layer replaced by a float nn.Linear holding the dequantized
Q4_1 weights, whose input is rounded per block of 32 to int8 exactly as the kernel rounds it. So the two differ
only by float summation order (and the rare int8 rounding flip that order causes): any layout, rotary, K/V
slot, bias, q/k-norm or residual mistake in the C step shows up as a large error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from yaie import LLM, SamplingParams
from yaie.runner import model_runner
from yaie.runner.fused_decode import INT8_MAX_BATCH, FusedDecoder
from yaie.runner.input_batch import StepInputs
from yaie.runner.model_runner import ModelRunner
from yaie.runner.quantization import Int4Linear, load_int8_gemm_kernel


class _ActQuantLinear(nn.Linear):
    """A float linear over the dequantized Q4_1 weights whose input is int8-rounded per block of 32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(*x.shape[:-1], -1, 32)
        scale = blocks.abs().amax(-1, keepdim=True) / 127
        rounded = torch.round(blocks / scale.clamp(min=1e-30)) * scale
        return super().forward(rounded.reshape(x.shape))


def _dequantized(layer: Int4Linear) -> nn.Linear:
    blocks = layer.q4_blocks.view(layer.out_features, -1, 20)  # [N, G, 20]: f16 scale, f16 min, 16 bytes
    scale, low = blocks[..., 0:2].contiguous().view(torch.float16), blocks[..., 2:4].contiguous().view(torch.float16)
    nibbles = blocks[..., 4:]
    levels = torch.cat([nibbles & 0xF, nibbles >> 4], dim=-1).float()  # [N, G, 32]
    weight = levels * scale.float() + low.float()
    linear = _ActQuantLinear(weight.shape[1] * 32, layer.out_features, bias=layer.bias is not None)
    linear.weight.data = weight.reshape(layer.out_features, -1)
    if layer.bias is not None:
        linear.bias.data = layer.bias.data.clone()
    return linear


class _Reference:
    """Runs the runner's model with its int4 layers swapped for `_dequantized` ones."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.swaps = [(parent, name, child, _dequantized(child)) for parent in list(model.modules())
                      for name, child in list(parent.named_children()) if isinstance(child, Int4Linear)]

    def __call__(self, runner: ModelRunner, inputs: StepInputs) -> torch.Tensor:
        for parent, name, _, reference in self.swaps:
            setattr(parent, name, reference)
        try:
            return self.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.attn)
        finally:
            for parent, name, original, _ in self.swaps:
                setattr(parent, name, original)


def _record_decode_errors(llm: LLM, reference: Callable[[StepInputs], torch.Tensor] | None = None) -> list[float]:
    """Make every decode step run the fused step then the reference (default: the dequantized int4 one; it
    rewrites the step's K/V, so the next step starts from reference K/V); returns each step's relative error
    of the fused hidden states."""
    runner = llm.engine.runner
    fused = runner.fused_decoder
    assert isinstance(fused, FusedDecoder)
    if reference is None:
        dequantized = _Reference(runner.model)
        reference = lambda inputs: dequantized(runner, inputs)  # noqa: E731
    errors: list[float] = []
    original_forward = runner._forward

    def checked_forward(inputs: StepInputs) -> torch.Tensor:
        if inputs.attn.prefill is not None:
            return original_forward(inputs)
        decode = inputs.attn.decode
        assert decode is not None
        hidden = fused(inputs.input_ids, inputs.positions, inputs.attn.slot_mapping, decode.block_table,
                       decode.context_lens)
        expected = reference(inputs)
        errors.append(((hidden - expected).norm() / expected.norm()).item())
        return hidden

    runner._forward = checked_forward  # type: ignore[method-assign]
    return errors


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"])
def test_fused_decode_matches_the_dequantized_reference(model_fixture: str, request: pytest.FixtureRequest,
                                                        ) -> None:
    model_dir: Path = request.getfixturevalue(model_fixture)
    llm = LLM(str(model_dir), num_blocks=64, block_size=4, quantization="int4", fused_decode_max_batch=8)
    errors = _record_decode_errors(llm)
    prompts = [[5, 6, 7], list(range(10, 29)), [3] * 9]  # contexts across several 4-token blocks
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert len(errors) == 7  # every step after the prompts' is a fused decode of the three sequences
    assert max(errors) < 1e-3, errors  # measured ~3e-7: a mistake in the C step is O(1)


def test_fused_decode_covers_small_decode_batches_only(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    llm = LLM(str(tiny_llama_dir), num_blocks=64, quantization="int4", fused_decode_max_batch=2, max_num_seqs=4)
    calls: list[int] = []
    original_call = FusedDecoder.__call__

    def counting_call(self: FusedDecoder, input_ids: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        calls.append(input_ids.shape[0])
        return original_call(self, input_ids, *args)

    monkeypatch.setattr(FusedDecoder, "__call__", counting_call)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (2, 3, 5, 6)]
    outputs = llm.generate([[5, 6, 7]] * 4, params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [2, 3, 5, 6]
    assert calls == [2, 2, 1]  # the steps of 4 and 3 sequences took the PyTorch path


def test_fused_decode_needs_quantized_weights_and_the_c_attention_kernel(tiny_llama_dir: Path) -> None:
    assert LLM(str(tiny_llama_dir), num_blocks=32, fused_decode_max_batch=8).engine.runner.fused_decoder is None
    int8 = LLM(str(tiny_llama_dir), num_blocks=32, quantization="int8", fused_decode_max_batch=8).engine.runner
    vnni = load_int8_gemm_kernel() is not None
    assert (int8.fused_decoder is not None) == vnni  # int8 fuses where its VNNI matmul runs
    assert int8.fused_decoder is None or int8.fused_decoder.max_batch == INT8_MAX_BATCH
    assert LLM(str(tiny_llama_dir), num_blocks=32, quantization="int4",
               fused_decode_max_batch=0).engine.runner.fused_decoder is None
    # the PyTorch reference attention was asked for: the fused step (which uses the C kernel) stays out
    assert LLM(str(tiny_llama_dir), num_blocks=32, quantization="int4",
               cpu_attention_kernel=False).engine.runner.fused_decoder is None


def test_int4_without_the_fused_step_frees_its_q4_blocks(tiny_llama_dir: Path) -> None:
    fused = LLM(str(tiny_llama_dir), num_blocks=32, quantization="int4", fused_decode_max_batch=8)
    plain = LLM(str(tiny_llama_dir), num_blocks=32, quantization="int4", fused_decode_max_batch=0)
    fused_int4 = [m for m in fused.engine.runner.model.modules() if isinstance(m, Int4Linear)]
    plain_int4 = [m for m in plain.engine.runner.model.modules() if isinstance(m, Int4Linear)]
    assert fused_int4 and all(m.q4_blocks.numel() > 0 for m in fused_int4)
    assert plain_int4 and all(m.q4_blocks.numel() == 0 for m in plain_int4)
    fused.engine.runner.fused_decoder = None  # both now decode through the torch int4 matmuls
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    with_blocks = [o.outputs[0].token_ids for o in fused.generate(prompts, params, use_tqdm=False)]
    without_blocks = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    assert without_blocks == with_blocks and all(len(tokens) == 8 for tokens in without_blocks)


def test_default_model_int4_answers_through_the_fused_step() -> None:
    llm = LLM(None, quantization="int4", max_num_seqs=2)
    assert llm.engine.runner.fused_decoder is not None
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    assert "Paris" in out.text


@pytest.mark.parametrize("kv_cache_dtype", ["float16", "int8"])
@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir", "tiny_llama_d64_dir",
                                           "tiny_llama_d128_dir"])
def test_fused_int8_steps_match_the_int8_pytorch_path(model_fixture: str, kv_cache_dtype: str,
                                                      request: pytest.FixtureRequest) -> None:
    """The int8 step uses the same packed weights, activation codes and matmul as the runner's Int8Linear, and
    takes prompt chunks too (each prompt token attended like a decode): every step, prompt-only, mixed and
    decode-only, is checked against the model's path on the same inputs. With an int8 cache both paths store
    the same codes and scales (attention/kv_layout.py's arithmetic). Head sizes 64 and 128 run the AVX-512
    kernels, prompt chunks included (their tokens attended together: attend_chunk_z16)."""
    if load_int8_gemm_kernel() is None:
        pytest.skip("no AVX-512 VNNI: int8 steps stay on the PyTorch path")
    model_dir: Path = request.getfixturevalue(model_fixture)
    llm = LLM(str(model_dir), num_blocks=64, block_size=4, quantization="int8", max_num_batched_tokens=24,
              kv_cache_dtype=kv_cache_dtype)
    runner = llm.engine.runner
    fused = runner.fused_decoder
    assert fused is not None and fused.max_batch == INT8_MAX_BATCH
    kinds: list[str] = []
    errors: list[float] = []

    def checked_forward(inputs: StepInputs) -> torch.Tensor:
        assert runner._fits_fused(inputs, fused)
        hidden = fused(inputs.input_ids, inputs.positions, inputs.attn.slot_mapping, inputs.token_block_table(),
                       inputs.positions + 1)
        expected = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.attn)
        kinds.append("decode" if inputs.attn.prefill is None else "mixed" if inputs.attn.decode else "prompt")
        errors.append(((hidden - expected).norm() / expected.norm()).item())
        return hidden

    runner._forward = checked_forward  # type: ignore[method-assign]
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    engine.add_request("a", list(range(10, 29)), params)
    engine.step()
    engine.add_request("b", [5, 6, 7] * 7, params)  # arrives while "a" decodes: chunked into mixed steps
    engine.add_request("c", [3] * 9, params)
    while engine.has_unfinished_requests():
        engine.step()
    assert {"prompt", "mixed", "decode"} <= set(kinds), kinds
    # Most steps agree to float rounding (~1e-7). Per-token int8 codes make a rare step differ by ~3e-3: the
    # two paths sum in different orders, one activation lands on the other side of a rounding boundary, and
    # every later token of that sequence attends the shifted K/V. A layout or attention mistake is O(1).
    assert sorted(errors)[len(errors) // 2] < 1e-5, list(zip(kinds, errors, strict=True))
    assert max(errors) < 1e-2, list(zip(kinds, errors, strict=True))


def test_long_prompt_chunks_take_the_model_path(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past FUSED_MAX_PROMPT_CONTEXT attended positions, a step with prompt chunks runs through the model."""
    if load_int8_gemm_kernel() is None:
        pytest.skip("no AVX-512 VNNI: int8 steps stay on the PyTorch path")
    monkeypatch.setattr(model_runner, "FUSED_MAX_PROMPT_CONTEXT", 100)
    llm = LLM(str(tiny_llama_dir), num_blocks=64, block_size=4, quantization="int8", max_num_batched_tokens=16)
    runner = llm.engine.runner
    fused_calls: list[int] = []
    original_call = FusedDecoder.__call__

    def counting_call(self: FusedDecoder, input_ids: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        fused_calls.append(input_ids.shape[0])
        return original_call(self, input_ids, *args)

    monkeypatch.setattr(FusedDecoder, "__call__", counting_call)
    prompt = list(range(10, 42))  # chunks of 16: positions 0-15 (sum 120) and 16-31 (sum 376), both over 100
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    assert fused_calls == [1, 1, 1]  # only the decode steps after the prompt's two chunks
    assert runner.fused_decoder is not None
