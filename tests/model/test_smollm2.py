"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers' own GGUF loading of the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from yaie import LLM, SamplingParams

TEXTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]
NUM_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(None, max_num_seqs=8, max_num_batched_tokens=256)


@pytest.fixture(scope="module")
def hf_model(default_gguf_path: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        str(default_gguf_path.parent), gguf_file=default_gguf_path.name, dtype=torch.float32
    ).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize(("kv_cache_dtype", "logprob_tolerance"), [("float32", 1e-3), ("auto", 5e-3)],
                         ids=["kv-fp32", "kv-default-fp16"])
def test_greedy_tokens_identical_to_transformers(hf_model: torch.nn.Module, kv_cache_dtype: str,
                                                 logprob_tolerance: float) -> None:
    llm = LLM(None, max_num_seqs=8, max_num_batched_tokens=256, kv_cache_dtype=kv_cache_dtype)
    prompts = [llm.tokenizer.encode(t) for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True, logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, out in zip(prompts, outputs, strict=True):
        ref = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=NUM_NEW_TOKENS, do_sample=False, output_logits=True,
            return_dict_in_generate=True, eos_token_id=None, pad_token_id=0,
        )
        ref_tokens = ref.sequences[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == ref_tokens
        ref_lps = [torch.log_softmax(s[0], -1)[t].item() for s, t in zip(ref.logits, ref_tokens, strict=True)]
        assert [lp.logprob for lp in out.outputs[0].logprobs] == pytest.approx(ref_lps, abs=logprob_tolerance)


def test_chat_template_renders(llm: LLM) -> None:
    ids = llm.render_chat([{"role": "user", "content": "Hello!"}])
    text = llm.tokenizer.decode(ids)
    assert "<|im_start|>user\nHello!<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_chat_answer_is_sensible_english(llm: LLM) -> None:
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        SamplingParams(temperature=0.0, max_tokens=32),
    )[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"  # the turn ends with <|im_end|>, not by running out of tokens
    assert "<|im_end|>" not in out.text


def test_stop_string_ends_text_before_it(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    full = llm.generate(["Once upon a time"], params, use_tqdm=False)[0].outputs[0].text
    words = full.split()
    stop = " " + words[len(words) // 2]
    expected = full[: full.index(stop)]
    out = llm.generate(["Once upon a time"], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True,
                                                            stop=(stop,)), use_tqdm=False)[0].outputs[0]
    assert out.text == expected
    assert out.finish_reason == "stop" and out.stop_reason == stop
