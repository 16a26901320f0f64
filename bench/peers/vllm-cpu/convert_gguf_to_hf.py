"""Convert a GGUF checkpoint into a Hugging Face directory (fp32 safetensors + tokenizer) for vLLM.

Run with the repository's venv (it has transformers + gguf): `.venv/bin/python convert_gguf_to_hf.py GGUF OUT_DIR`.
transformers de-quantizes every GGUF tensor to fp32 on load but keeps a "gguf" quantization marker
(`hf_quantizer`, `config.quantization_config`) that makes `save_pretrained` refuse; the weights are plain fp32,
so the marker is dropped before saving. The saved directory is reloaded and its logits compared with the
GGUF-loaded model's on a short prompt, so a broken conversion fails here rather than inside vLLM.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

CHECK_TOKEN_IDS = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
MAX_ABS_LOGIT_DIFF = 1e-3


def load_gguf_model(gguf_path: Path) -> PreTrainedModel:
    """The GGUF's weights de-quantized to fp32, with the quantization marker cleared so it can be saved."""
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval()


def last_logits(model: PreTrainedModel) -> torch.Tensor:
    """Logits of the last position for CHECK_TOKEN_IDS: [vocab_size]."""
    input_ids = torch.tensor([CHECK_TOKEN_IDS])  # [1, num_tokens]
    with torch.inference_mode():
        return model(input_ids=input_ids).logits[0, -1]


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Write out_dir (config, generation config, model.safetensors, tokenizer); verify it reloads identically."""
    model = load_gguf_model(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    max_diff = (last_logits(model) - last_logits(reloaded)).abs().max().item()
    if max_diff > MAX_ABS_LOGIT_DIFF:
        raise RuntimeError(f"reloaded {out_dir} differs from {gguf_path}: max |logit diff| = {max_diff:.3g}")
    print(f"converted {gguf_path} -> {out_dir} (max |logit diff| after reload: {max_diff:.2g})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf_path", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.gguf_path.is_file():
        raise ValueError(f"gguf_path does not exist: {args.gguf_path}")
    convert(args.gguf_path, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
