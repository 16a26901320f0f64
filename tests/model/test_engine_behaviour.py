"""Engine behaviour on real (tiny random) weights: seeds, n, abort, stop strings, limits, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from yaie import LLM, SamplingParams
from yaie.engine.errors import PromptTooLongError
from yaie.types import InvalidParameterError

PROMPT = list(range(500, 540))


@pytest.fixture(scope="module")
def llm(tiny_llama_dir) -> LLM:  # type: ignore[no-untyped-def]
    return LLM(str(tiny_llama_dir), num_blocks=128, block_size=4, max_model_len=256)


def sampled(**kw: object) -> SamplingParams:
    options: dict[str, object] = {"temperature": 1.0, "max_tokens": 10, "ignore_eos": True, **kw}
    return SamplingParams(**options)  # type: ignore[arg-type]


def test_seed_reproducible_alone_and_in_a_batch(llm: LLM) -> None:
    alone = llm.generate([PROMPT], sampled(seed=1234), use_tqdm=False)[0].outputs[0].token_ids
    others = [list(range(10, 10 + n)) for n in (5, 17, 33)]
    batch = llm.generate([*others, PROMPT], [sampled(), sampled(), sampled(), sampled(seed=1234)],
                         use_tqdm=False)
    assert batch[-1].outputs[0].token_ids == alone
    different = llm.generate([PROMPT], sampled(seed=99), use_tqdm=False)[0].outputs[0].token_ids
    assert different != alone


def test_n_samples_share_prompt_blocks(llm: LLM) -> None:
    out = llm.generate([PROMPT], sampled(n=3, seed=7), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # the samples differ
    assert llm.engine.stats().prefix_hits_tokens > 0  # siblings reused the first sample's prompt blocks
    assert llm.engine.stats().num_free_blocks == 128


def test_abort_returns_every_block(llm: LLM) -> None:
    engine = llm.engine
    engine.add_request("to-abort", PROMPT, sampled(max_tokens=50))
    engine.step()
    engine.step()
    assert engine.stats().num_free_blocks < 128
    final = engine.abort("to-abort")
    assert final is not None and final.finished and final.outputs[0].finish_reason == "abort"
    assert engine.stats().num_free_blocks == 128
    assert not engine.has_unfinished_requests()


def test_min_tokens_and_stop_token_ids(llm: LLM) -> None:
    first = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    tokens = first.outputs[0].token_ids
    stop_at = tokens[3]
    params = SamplingParams(temperature=0, max_tokens=8, stop_token_ids=(stop_at,))
    out = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == tokens[: tokens.index(stop_at) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at


def test_queue_timeout(tiny_llama_dir) -> None:  # type: ignore[no-untyped-def]
    llm = LLM(str(tiny_llama_dir), num_blocks=64, max_num_seqs=1, queue_timeout_s=0.05, max_model_len=256)
    engine = llm.engine
    engine.add_request("first", PROMPT, sampled(max_tokens=200))
    engine.step()
    engine.add_request("late", PROMPT, sampled(max_tokens=5))
    time.sleep(0.1)
    finishes = {o.request_id: o.outputs[0].finish_reason for o in engine.step() if o.finished}
    assert finishes.get("late") == "timeout"
    engine.abort("first")
    assert engine.stats().num_free_blocks == 64


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_invalid_sampling_values_name_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param) as info:
        SamplingParams(**kwargs)
    assert isinstance(info.value, InvalidParameterError) and info.value.param == param


def test_bad_prompts(llm: LLM) -> None:
    with pytest.raises(ValueError, match="prompt must not be empty"):
        llm.generate([[]], SamplingParams(), use_tqdm=False)
    with pytest.raises(PromptTooLongError, match="context window") as info:
        llm.generate([list(range(300))], SamplingParams(), use_tqdm=False)
    assert info.value.param == "input_tokens"
    with pytest.raises(PromptTooLongError) as info:
        llm.generate([PROMPT], SamplingParams(max_tokens=250), use_tqdm=False)
    assert info.value.param == "max_tokens"
    assert not llm.engine.has_unfinished_requests()


def test_priority_policy_serves_urgent_first(tiny_llama_dir) -> None:  # type: ignore[no-untyped-def]
    llm = LLM(str(tiny_llama_dir), num_blocks=64, max_num_seqs=1, policy="priority", max_model_len=256)
    engine = llm.engine
    engine.add_request("background", PROMPT, sampled(max_tokens=30), priority=5)
    engine.step()
    engine.add_request("urgent", PROMPT[:10], sampled(max_tokens=3), priority=0)
    order = []
    while engine.has_unfinished_requests():
        order += [o.request_id for o in engine.step() if o.finished]
    assert order == ["urgent", "background"]
    assert engine.stats().num_preemptions_total >= 1


def test_kv_blocks_default_to_64_tokens_on_cpu(tiny_llama_dir: Path) -> None:
    engine = LLM(str(tiny_llama_dir), num_blocks=8).engine
    assert engine.parts.cache_config.block_size == 64 and engine.stats().kv_capacity_tokens == 8 * 64
    assert LLM(str(tiny_llama_dir), num_blocks=8, block_size=16).engine.stats().kv_capacity_tokens == 8 * 16


def test_prompt_chunks_while_decoding_default_to_64_tokens_on_cpu(tiny_llama_dir: Path) -> None:
    assert LLM(str(tiny_llama_dir), num_blocks=32).engine.scheduler._config.max_num_prefill_tokens == 64
    chosen = LLM(str(tiny_llama_dir), num_blocks=32, max_num_prefill_tokens=200)
    assert chosen.engine.scheduler._config.max_num_prefill_tokens == 200
