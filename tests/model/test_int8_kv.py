"""The int8 KV cache (attention/kv_layout.py): per-token, per-head codes with a float32 scale.

int8 K/V is not exact, so greedy text is not held to transformers' (a random tiny model's near-ties flip);
instead: the bytes round-trip within half a quantization step, the C kernel and the PyTorch gather path read
them identically (greedy tokens identical, logprobs within 1e-4, through chunked prefill, prefix hits and
preemption), logprobs stay close to a float32 cache's, and the default model still answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yaie import LLM, SamplingParams
from yaie.attention.kv_layout import INT8_SCALE_BYTES, cache_shape, read_kv, write_kv
from yaie.runner.standalone import run_prompt

PROMPTS = [[1, 17, 304, 5], list(range(100, 131)), [7] * 3 + list(range(2000, 2040)) + [9, 9, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=0)


def test_int8_rows_round_trip_within_half_a_step() -> None:
    torch.manual_seed(0)
    kv_cache = torch.zeros(cache_shape(10, 3, 64, torch.int8), dtype=torch.int8)
    assert kv_cache.shape == (2, 10, 3, 64 + INT8_SCALE_BYTES)
    k, v = torch.randn(4, 3, 64) * 5, torch.randn(4, 3, 64)
    k[0, 1] = 0.0  # an all-zero head keeps a finite scale
    slots = torch.tensor([7, 2, 9, 0])
    write_kv(kv_cache, slots, k, v)
    key, value = read_kv(kv_cache, slots, torch.float32)
    for got, want in ((key, k), (value, v)):
        step = want.abs().amax(dim=-1, keepdim=True) / 127  # [4, 3, 1]
        assert bool(((got - want).abs() <= step / 2 + 1e-6).all())
    assert bool((key[0, 1] == 0).all())
    assert bool((kv_cache[:, [1, 3, 4, 5, 6, 8]] == 0).all())  # other slots untouched


def _run(model_dir: Path, **options: object) -> list[tuple[list[int], list[float]]]:
    llm = LLM(str(model_dir), block_size=4, **options)  # type: ignore[arg-type]
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    return [(o.outputs[0].token_ids, [lp.logprob for lp in o.outputs[0].logprobs]) for o in outputs]


@pytest.mark.parametrize("scenario", [
    {"num_blocks": 64, "max_num_batched_tokens": 7},  # chunked prefill
    {"num_blocks": 15, "max_num_batched_tokens": 64},  # preemption: 15 blocks of 4 hold two sequences at most
])
@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"])
def test_c_kernel_and_gather_path_read_the_same_int8_cache(model_fixture: str, scenario: dict[str, int],
                                                            request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    kernel = _run(model_dir, kv_cache_dtype="int8", **scenario)
    gather = _run(model_dir, kv_cache_dtype="int8", cpu_attention_kernel=False, **scenario)
    for (kernel_tokens, kernel_logprobs), (gather_tokens, gather_logprobs) in zip(kernel, gather, strict=True):
        assert kernel_tokens == gather_tokens
        assert kernel_logprobs == pytest.approx(gather_logprobs, abs=1e-4)


def test_int8_cache_stays_close_to_float32(tiny_llama_dir: Path) -> None:
    """Teacher-forced logprobs of one prompt with K/V read back from an int8 vs a float32 cache."""
    model = LLM(str(tiny_llama_dir), num_blocks=16).engine.runner.model
    token_ids = list(range(100, 160))
    with torch.inference_mode():
        exact, int8 = (torch.log_softmax(model.compute_logits(run_prompt(model, token_ids, dtype)), dim=-1)
                       for dtype in (torch.float32, torch.int8))
    gap = (exact - int8).abs().max().item()
    assert 0 < gap < 0.05, gap  # measured 0.018; a layout or scale mistake is O(1)


def test_default_model_answers_with_an_int8_cache() -> None:
    llm = LLM(None, kv_cache_dtype="int8", max_num_seqs=2)
    out = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                   SamplingParams(temperature=0, max_tokens=32))[0].outputs[0]
    assert "Paris" in out.text


def test_auto_picks_int8_for_int8_weights_on_cpu(tiny_llama_dir: Path) -> None:
    kv_dtypes = {q: LLM(str(tiny_llama_dir), num_blocks=8, quantization=q).engine.runner.kv_caches[0].dtype
                 for q in ("none", "int8", "int4")}
    assert kv_dtypes == {"none": torch.float16, "int8": torch.int8, "int4": torch.float16}
    explicit = LLM(str(tiny_llama_dir), num_blocks=8, quantization="int8", kv_cache_dtype="float16")
    assert explicit.engine.runner.kv_caches[0].dtype == torch.float16
