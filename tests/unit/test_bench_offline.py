"""`yaie bench offline` and the in-process chat backend on a tiny random Llama made here (save_pretrained, with a
small word-level tokenizer carrying a chat template): real engine, real transformers baseline, in seconds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from yaie.bench.baseline import load_baseline_model, locate_weights, read_vocab_size, run_baseline
from yaie.bench.offline import OfflineBenchConfig, run_offline_benchmark
from yaie.bench.report import format_offline_report, offline_result_to_json, write_json
from yaie.bench.stats import ThroughputResult
from yaie.chat import ChatSettings, LocalBackend, run_chat
from yaie.models.arch import ModelLoadError

VOCAB_SIZE = 256
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    words = specials + [f"w{i}" for i in range(VOCAB_SIZE - len(specials))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def test_locate_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    location = locate_weights(str(tiny_model_dir))
    assert (location.directory, location.gguf_file) == (tiny_model_dir, None)
    assert read_vocab_size(location) == VOCAB_SIZE
    default = locate_weights(None)
    assert default.gguf_file is not None and default.gguf_file.endswith(".gguf")
    with pytest.raises(ModelLoadError, match="no such file"):
        locate_weights(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        locate_weights(str(tmp_path / "weights.bin"))


def test_baseline_generates_exactly_output_len_even_past_eos(tiny_model_dir: Path) -> None:
    model = load_baseline_model(locate_weights(str(tiny_model_dir)))
    prompts = [[10, 11, 12, 13, 14], [20, 21, 22]]
    with torch.inference_mode():
        first_greedy = int(model(torch.tensor([prompts[0]])).logits[0, -1].argmax())
    model.generation_config.eos_token_id = first_greedy  # the model would stop at once
    result = run_baseline(model, prompts, output_len=6, show_progress=False)
    assert (result.num_requests, result.num_input_tokens, result.num_output_tokens) == (2, 8, 12)
    assert result.elapsed_s > 0
    with pytest.raises(ValueError, match="output_len"):
        run_baseline(model, prompts, output_len=0)


def test_offline_benchmark_runs_ours_and_the_baseline(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = OfflineBenchConfig(model=str(tiny_model_dir), num_prompts=6, input_len=12, output_len=5,
                                baseline_num_prompts=2, show_progress=False,
                                engine_options={"max_num_seqs": 4, "max_num_batched_tokens": 32, "num_blocks": 64})
    result = run_offline_benchmark(config)
    assert (result.ours.num_requests, result.ours.num_input_tokens, result.ours.num_output_tokens) == (6, 72, 30)
    assert result.baseline is not None
    assert (result.baseline.num_requests, result.baseline.num_output_tokens) == (2, 10)
    assert result.ratio == pytest.approx(result.ours.output_tokens_per_s / result.baseline.output_tokens_per_s)
    report = format_offline_report(result)
    assert "Output tokens/s, ours / baseline:" in report and "transformers (naive)" in report
    path = tmp_path / "offline.json"
    write_json(path, offline_result_to_json(result))
    document = json.loads(path.read_text())
    assert document["ours"]["num_output_tokens"] == 30
    assert document["config"]["engine_options"]["max_num_seqs"] == 4
    assert document["ratio_output_tokens_per_s"] == pytest.approx(result.ratio)


def test_offline_benchmark_without_baseline(tiny_model_dir: Path) -> None:
    config = OfflineBenchConfig(model=str(tiny_model_dir), num_prompts=2, input_len=4, output_len=3,
                                run_baseline=False, warmup=False, show_progress=False)
    result = run_offline_benchmark(config)
    assert result.baseline is None and result.ratio is None
    assert result.ours.num_output_tokens == 6
    assert "ours / baseline" not in format_offline_report(result)


def test_offline_config_validation() -> None:
    for kwargs, param in [({"num_prompts": 0}, "num_prompts"), ({"input_len": 0}, "input_len"),
                          ({"output_len": 0}, "output_len"), ({"baseline_num_prompts": 0}, "baseline_num_prompts")]:
        with pytest.raises(ValueError, match=param):
            OfflineBenchConfig(**kwargs)
    assert OfflineBenchConfig(num_prompts=64).num_baseline_prompts == 8
    assert OfflineBenchConfig(num_prompts=3).num_baseline_prompts == 3
    assert OfflineBenchConfig(num_prompts=64, baseline_num_prompts=100).num_baseline_prompts == 64


def test_report_formats_a_ratio() -> None:
    from yaie.bench.offline import OfflineBenchResult

    ours = ThroughputResult("yaie", 64, 64 * 256, 64 * 128, 20.0)
    baseline = ThroughputResult("transformers (naive)", 8, 8 * 256, 8 * 128, 40.0)
    report = format_offline_report(OfflineBenchResult(OfflineBenchConfig(), "m.gguf", ours, baseline, 2))
    assert "409.6" in report and "25.6" in report and "16.0x" in report


def test_local_chat_streams_and_returns_every_block(tiny_model_dir: Path) -> None:
    backend = LocalBackend(str(tiny_model_dir))
    engine = backend._llm.engine
    num_blocks = engine.stats().num_blocks
    out = io.StringIO()
    lines = ["w1 w2 w3", "w4", "/exit"]
    run_chat(backend, ChatSettings(max_tokens=4, temperature=0.0), "w9", read_line=lambda _: lines.pop(0), out=out)
    assert "[4 tokens," in out.getvalue()
    assert engine.stats().num_free_blocks == num_blocks
    # a reply abandoned after its first piece is aborted at once
    replies = backend.stream_reply([{"role": "user", "content": "w5"}], ChatSettings(max_tokens=50, temperature=0))
    next(replies)
    replies.close()
    assert not engine.has_unfinished_requests()
    assert engine.stats().num_free_blocks == num_blocks
