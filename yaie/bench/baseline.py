"""The naive baseline: a per-request loop of transformers `generate` on the same weights as our engine.

This is what tutorial servers do (one request at a time, no batching, no paged cache), so the ratio to it says
what batching and the engine buy. Greedy, with min_new_tokens = max_new_tokens so every request produces exactly
`output_len` tokens even if the model would stop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from yaie.bench.stats import ThroughputResult


@dataclass(frozen=True)
class WeightsLocation:
    """Where transformers finds the weights: a directory, plus the file name inside it for a GGUF."""

    directory: Path
    gguf_file: str | None = None

    @property
    def display_name(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def locate_weights(model: str | None) -> WeightsLocation:
    """Resolve `--model` exactly as the engine does (None = the default GGUF, a .gguf file, or a Hugging Face
    directory), so both runs load the same weights. Raises `ModelLoadError` naming the path."""
    from yaie.models.loader import resolve_model_path

    path = resolve_model_path(model)
    if path.is_file():
        return WeightsLocation(path.parent, path.name)
    return WeightsLocation(path)


def read_vocab_size(location: WeightsLocation) -> int | None:
    """The vocabulary size, read cheaply (config.json, or the GGUF's token list), or None if unknown."""
    if location.gguf_file is None:
        config = json.loads((location.directory / "config.json").read_text())
        size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
        return int(size) if size else None
    import gguf

    reader = gguf.GGUFReader(location.directory / location.gguf_file)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return len(tokens.data) if tokens is not None else None


def load_baseline_model(location: WeightsLocation) -> Any:
    """The transformers model in float32 on CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if location.gguf_file is not None:
        kwargs["gguf_file"] = location.gguf_file
    model = AutoModelForCausalLM.from_pretrained(str(location.directory), **kwargs)
    return model.eval()


def run_baseline(
    model: Any, prompts: list[list[int]], output_len: int, show_progress: bool = True
) -> ThroughputResult:
    """Generate `output_len` greedy tokens for each prompt, one request at a time; time the whole loop."""
    import torch

    if output_len < 1:
        raise ValueError(f"output_len must be >= 1, got {output_len}")
    pad_token_id = _pad_token_id(model)
    num_output_tokens = 0
    start_s = time.perf_counter()
    for prompt_ids in tqdm(prompts, desc="baseline (transformers)", unit="req", disable=not show_progress):
        input_ids = torch.tensor([prompt_ids], dtype=torch.long)  # [1, input_len]
        with torch.inference_mode():
            output_ids = model.generate(  # [1, input_len + output_len]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                pad_token_id=pad_token_id,
            )
        num_output_tokens += output_ids.shape[1] - input_ids.shape[1]
    elapsed_s = time.perf_counter() - start_s
    num_input_tokens = sum(len(p) for p in prompts)
    return ThroughputResult("transformers (naive)", len(prompts), num_input_tokens, num_output_tokens, elapsed_s)


def _pad_token_id(model: Any) -> int | None:
    config = model.generation_config
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = config.eos_token_id
    if isinstance(eos, list):
        return int(eos[0]) if eos else None
    return None if eos is None else int(eos)
