"""POST /v1/embeddings: validate and tokenize the inputs, embed them through the dynamic batcher.

Inputs are strings (tokenized with the model's special tokens) or token-id lists (used as given). An input
longer than the model's limit is a 400 unless the request asks for truncation (`truncate_prompt_tokens`).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Histogram

from yaie.embeddings.batcher import DynamicBatcher
from yaie.embeddings.config import EmbeddingConfig
from yaie.embeddings.model import EmbeddingModel
from yaie.server.errors import APIError
from yaie.server.protocol_embeddings import (
    MAX_EMBEDDING_INPUTS,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from yaie.types import InvalidParameterError

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512)


class ServingEmbedding:
    """Owns the embedding model's batcher; `start()` from the running event loop, `close()` at shutdown."""

    def __init__(self, model: EmbeddingModel, config: EmbeddingConfig, registry: CollectorRegistry) -> None:
        self.model = model
        self.model_name = model.name
        self._batch_sizes = Histogram("yaie:embedding_batch_size", "Inputs per embedding forward pass.",
                                      ["model_name"], buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.batcher = DynamicBatcher(model.embed, config.max_batch_size, config.max_wait_ms,
                                      on_batch=self._batch_sizes.labels(model.name).observe)

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    async def create(self, request: EmbeddingRequest) -> EmbeddingResponse:
        if request.model is not None and request.model != self.model_name:
            raise APIError(404, f"the model {request.model!r} does not exist; the embedding model is "
                                f"{self.model_name!r}", "model")
        if request.dimensions is not None and request.dimensions != self.model.dimensions:
            raise InvalidParameterError("dimensions", f"the model {self.model_name!r} does not support "
                                                      f"dimensions: its embeddings have a fixed "
                                                      f"{self.model.dimensions} dimensions")
        token_ids = await asyncio.to_thread(self.input_token_ids, request.input, request.truncate_prompt_tokens)
        embeddings = await self.batcher.embed(token_ids)
        data = [Embedding(index=i, embedding=_encode(vector, request.encoding_format))
                for i, vector in enumerate(embeddings)]
        num_tokens = sum(len(ids) for ids in token_ids)
        return EmbeddingResponse(data=data, model=self.model_name,
                                 usage=EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens))

    def input_token_ids(self, inputs: Any, truncate_prompt_tokens: int | None) -> list[list[int]]:
        """Each input as token ids, checked against the vocabulary and the model's input limit."""
        batch = _as_batch(inputs)
        limit = self.model.max_input_tokens
        keep = None
        if truncate_prompt_tokens is not None:
            keep = limit if truncate_prompt_tokens in (-1, 0) else min(truncate_prompt_tokens, limit)
        token_ids: list[list[int]] = []
        for index, item in enumerate(batch):
            if isinstance(item, str):
                ids = self.model.tokenize(item, keep)
            else:
                ids = list(item[:keep]) if keep is not None else list(item)
                self._check_vocab(ids, index)
            if len(ids) > limit:
                raise InvalidParameterError(
                    "input", f"input[{index}] has {len(ids)} tokens; the model {self.model_name!r} accepts at "
                             f"most {limit} (set truncate_prompt_tokens to truncate)")
            token_ids.append(ids)
        return token_ids

    def _check_vocab(self, ids: list[int], index: int) -> None:
        vocab_size = self.model.vocab_size
        if any(not 0 <= t < vocab_size for t in ids):
            raise InvalidParameterError("input", f"input[{index}]: token ids must be in [0, {vocab_size})")


def _as_batch(inputs: Any) -> list[str] | list[list[int]]:
    """The input as a non-empty list of non-empty strings or token-id lists."""
    if isinstance(inputs, str):
        batch: list[Any] = [inputs]
    elif inputs and isinstance(inputs[0], int):
        batch = [inputs]
    else:
        batch = list(inputs)
    if not batch:
        raise InvalidParameterError("input", "input must not be empty")
    if len(batch) > MAX_EMBEDDING_INPUTS:
        raise InvalidParameterError("input", f"input has {len(batch)} items; at most {MAX_EMBEDDING_INPUTS} "
                                             "are allowed per request")
    for index, item in enumerate(batch):
        if len(item) == 0:
            raise InvalidParameterError("input", f"input[{index}] must not be empty")
    return batch


def _encode(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """vector [D] float32 as a JSON list, or as base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return np.asarray(vector.numpy(), dtype=np.float32).tolist()
