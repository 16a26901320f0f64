"""Activation smoothing before int8 (runner/smoothing.py): it must leave the float model's function unchanged,
and it must make int8 closer to float32 on the default model, whose activations have outlier channels."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from yaie import LLM
from yaie.models.llama import LlamaForCausalLM
from yaie.runner.quantization import quantize_model
from yaie.runner.smoothing import calibration_token_ids, input_absmax, smooth_for_int8
from yaie.runner.standalone import run_prompt

TEXT = Path("/usr/share/common-licenses/GPL-3")  # not among the calibration texts


@torch.inference_mode()
def _logits(model: LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    return model.compute_logits(run_prompt(model, token_ids))  # [T, V]


@torch.inference_mode()
def _perplexity(model: LlamaForCausalLM, token_ids: list[int], window: int = 512) -> float:
    nll, num_scored = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        ids = token_ids[start:start + window]
        logprobs = torch.log_softmax(_logits(model, ids)[:-1], dim=-1)
        nll -= logprobs.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        num_scored += len(ids) - 1
    return math.exp(nll / num_scored)


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"])
def test_smoothing_leaves_the_float_model_unchanged(model_fixture: str, request: pytest.FixtureRequest) -> None:
    """Grouped-query V scales, V biases (Qwen2), q/k norms (Qwen3) and the tied lm_head: every fold is exact up
    to float rounding, and the tied embedding itself is not touched."""
    llm = LLM(str(request.getfixturevalue(model_fixture)), num_blocks=16)
    model = llm.engine.runner.model
    assert model.arch.num_attention_heads > model.arch.num_key_value_heads  # the grouped V scales are covered
    smoothed = copy.deepcopy(model)
    embedding = smoothed.embed_tokens.weight.clone()
    smooth_for_int8(smoothed, llm.tokenizer)
    assert smoothed.lm_head is not None and torch.equal(smoothed.embed_tokens.weight, embedding)
    changed = [name for name, p in smoothed.named_parameters()
               if not torch.equal(p, dict(model.named_parameters()).get(name, p))]
    assert any("norm" in name for name in changed) and any("o_proj" in name for name in changed)
    token_ids = list(range(100, 160))
    torch.testing.assert_close(_logits(smoothed, token_ids), _logits(model, token_ids), rtol=1e-4, atol=1e-4)


def test_calibration_covers_every_linear_and_the_final_norm(tiny_llama_dir: Path) -> None:
    llm = LLM(str(tiny_llama_dir), num_blocks=16)
    model = llm.engine.runner.model
    sequences = calibration_token_ids(llm.tokenizer)
    assert len(sequences) >= 4 and all(len(s) > 20 for s in sequences)
    absmax = input_absmax(model, sequences)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert set(absmax) == set(linears) | {model.norm}  # the lm_head's input is the final norm's output
    assert all(v.shape == (m.in_features,) and bool((v > 0).all()) for m, v in absmax.items() if m in linears)


def test_smoothing_brings_int8_closer_to_float_on_the_default_model() -> None:
    """SmolLM2's QKV and down_proj inputs carry outlier channels; smoothing moves them into the weights.
    Measured on these 2,048 tokens: float32 23.76, int8 24.58 without smoothing, 24.22 with. (One 512-token
    window alone is too noisy to judge: int8 moves by several percent with any rounding change.)"""
    llm = LLM(None, max_num_seqs=1)
    model = llm.engine.runner.model
    token_ids = llm.tokenizer(TEXT.read_text())["input_ids"][:2048]
    plain, smoothed = copy.deepcopy(model), copy.deepcopy(model)
    smooth_for_int8(smoothed, llm.tokenizer)
    for m in (plain, smoothed):
        quantize_model(m, "int8")
    float_ppl, plain_ppl, smoothed_ppl = (_perplexity(m, token_ids) for m in (model, plain, smoothed))
    assert smoothed_ppl < plain_ppl - 0.3 * (plain_ppl - float_ppl), (float_ppl, plain_ppl, smoothed_ppl)
    assert smoothed_ppl < 1.05 * float_ppl, (float_ppl, smoothed_ppl)
