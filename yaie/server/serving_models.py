"""GET /v1/models: the chat model, then the embedding model when one is served."""

from __future__ import annotations

import time

from yaie.server.protocol import ModelCard, ModelList


class ServingModels:
    def __init__(self, model_name: str, max_model_len: int) -> None:
        self._cards = [ModelCard(id=model_name, created=int(time.time()), max_model_len=max_model_len)]

    def add(self, model_name: str, max_model_len: int) -> None:
        """List another served model (e.g. the embedding model, max_model_len = its input limit)."""
        self._cards.append(ModelCard(id=model_name, created=int(time.time()), max_model_len=max_model_len))

    def list(self) -> ModelList:
        return ModelList(data=list(self._cards))
