"""Our engine vs Hugging Face transformers on the same weights: greedy tokens identical, logprobs close.

Scenarios: each prompt alone, all batched together, prefix-cache hits, chunked prefill (tiny token budget),
and preemption (tiny KV budget). Tiny random Llama / Qwen2 / Qwen3 checkpoints come from conftest fixtures.
Each runs with a float32 K/V cache (exact: logprobs within 1e-4) and with the CPU default float16 cache (the
rounding of K/V moves logprobs by ~1e-4..1e-3; greedy tokens stay identical).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from yaie import LLM, SamplingParams

NUM_NEW_TOKENS = 12
PROMPTS = [
    [1, 17, 304, 5],
    list(range(100, 131)),
    [7] * 3 + list(range(2000, 2040)) + [9, 9, 9],
    list(range(300, 303)),
]


def hf_greedy(model_dir: str, prompt: list[int], num_new: int) -> tuple[list[int], list[float]]:
    """Greedy continuation and the chosen tokens' logprobs from transformers' own generate()."""
    model = _hf_model(model_dir)
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=num_new, do_sample=False, output_logits=True,
        return_dict_in_generate=True, eos_token_id=None, pad_token_id=0,
    )
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[tok].item() for step, tok in zip(out.logits, tokens, strict=True)]
    return tokens, logprobs


_HF_CACHE: dict[str, torch.nn.Module] = {}


def _hf_model(model_dir: str) -> torch.nn.Module:
    if model_dir not in _HF_CACHE:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        model.generation_config.eos_token_id = None
        _HF_CACHE[model_dir] = model
    return _HF_CACHE[model_dir]


@pytest.fixture(scope="module", params=["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"])
def model_dir(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def reference(model_dir: str) -> list[tuple[list[int], list[float]]]:
    return [hf_greedy(model_dir, p, NUM_NEW_TOKENS) for p in PROMPTS]


LOGPROB_TOLERANCE = {"float32": 1e-4, "float16": 3e-3}


@pytest.fixture(scope="module", params=["float32", "float16"], ids=["kv-fp32", "kv-fp16"])
def kv_dtype(request: pytest.FixtureRequest) -> str:
    return str(request.param)


GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True, logprobs=0)


def assert_matches(outputs, reference, kv_dtype: str) -> None:  # type: ignore[no-untyped-def]
    for out, (ref_tokens, ref_logprobs) in zip(outputs, reference, strict=True):
        completion = out.outputs[0]
        assert completion.token_ids == ref_tokens
        ours = [lp.logprob for lp in completion.logprobs]
        assert ours == pytest.approx(ref_logprobs, abs=LOGPROB_TOLERANCE[kv_dtype])
        assert completion.finish_reason == "length"


def test_each_prompt_alone(model_dir: str, reference, kv_dtype: str) -> None:  # type: ignore[no-untyped-def]
    llm = LLM(model_dir, num_blocks=64, enable_prefix_caching=False, kv_cache_dtype=kv_dtype)
    outputs = [llm.generate([p], GREEDY, use_tqdm=False)[0] for p in PROMPTS]
    assert_matches(outputs, reference, kv_dtype)


def test_batched_with_prefix_hits(model_dir: str, reference, kv_dtype: str) -> None:  # type: ignore[no-untyped-def]
    llm = LLM(model_dir, num_blocks=64, block_size=4, kv_cache_dtype=kv_dtype)
    assert_matches(llm.generate(PROMPTS, GREEDY, use_tqdm=False), reference, kv_dtype)
    again = llm.generate(PROMPTS, GREEDY, use_tqdm=False)  # prompts' full blocks are now cached
    assert_matches(again, reference, kv_dtype)
    assert sum(o.num_cached_tokens for o in again) > 0
    assert llm.engine.stats().num_free_blocks == 64


@pytest.mark.parametrize("cpu_attention_kernel", [True, False], ids=["c-kernel", "torch-gather"])
def test_chunked_prefill(model_dir: str, reference, kv_dtype: str,  # type: ignore[no-untyped-def]
                         cpu_attention_kernel: bool) -> None:
    llm = LLM(model_dir, num_blocks=64, block_size=4, max_num_batched_tokens=7,
              cpu_attention_kernel=cpu_attention_kernel, kv_cache_dtype=kv_dtype)
    assert_matches(llm.generate(PROMPTS, GREEDY, use_tqdm=False), reference, kv_dtype)


def test_preemption(model_dir: str, reference, kv_dtype: str) -> None:  # type: ignore[no-untyped-def]
    # 18 blocks of 4 tokens cannot hold all four sequences (up to 58 tokens each) at once.
    llm = LLM(model_dir, num_blocks=18, block_size=4, max_num_batched_tokens=64, kv_cache_dtype=kv_dtype)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert_matches(outputs, reference, kv_dtype)
    assert llm.engine.stats().num_preemptions_total > 0
    assert llm.engine.stats().num_free_blocks == 18
