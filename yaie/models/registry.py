"""Architecture name -> model class, and building a model from a checkpoint without a second weight copy."""

from __future__ import annotations

import torch

from yaie.models.llama import LlamaForCausalLM
from yaie.models.loader import Checkpoint, ModelLoadError

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def build_model(checkpoint: Checkpoint, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    """Create the module on the meta device, materialise it empty on `device`, then stream weights in."""
    arch = checkpoint.arch
    model_cls = MODEL_CLASSES.get(arch.architecture)
    if model_cls is None:
        raise ModelLoadError(
            f"{checkpoint.path}: architecture {arch.architecture!r} is not supported "
            f"(supported: {', '.join(sorted(MODEL_CLASSES))})"
        )
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = model_cls(arch)
    finally:
        torch.set_default_dtype(previous_dtype)
    model.to_empty(device=device)
    model.rotary.build_tables()
    try:
        model.load_weights((name, t.to(device=device, dtype=dtype)) for name, t in checkpoint.iter_weights(dtype))
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{checkpoint.path}: {exc}") from exc
    return model.eval()
