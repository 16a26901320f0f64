"""GET /v1/models: the one model this server serves."""

from __future__ import annotations

import time

from yaie.server.protocol import ModelCard, ModelList


class ServingModels:
    def __init__(self, model_name: str, max_model_len: int) -> None:
        self._card = ModelCard(id=model_name, created=int(time.time()), max_model_len=max_model_len)

    def list(self) -> ModelList:
        return ModelList(data=[self._card])
