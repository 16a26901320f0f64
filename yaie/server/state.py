"""The server's mutable state: the engine once loaded, its serving objects, draining and in-flight counts.

The HTTP server starts before the model is loaded, so `/health` can answer 503 during the load; until
`attach_engine` runs, `ready()` raises a 503 for every API request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from yaie.server.errors import APIError, overloaded
from yaie.server.metrics import ServerMetrics
from yaie.server.serving_base import GenerationStream
from yaie.server.serving_chat import ServingChat
from yaie.server.serving_completion import ServingCompletion
from yaie.server.serving_models import ServingModels
from yaie.server.settings import ServerConfig

if TYPE_CHECKING:
    from yaie.engine.async_engine import AsyncEngine
    from yaie.server.serving_embedding import ServingEmbedding

DRAIN_RETRY_AFTER_S = 5.0


@dataclass(frozen=True)
class Servings:
    chat: ServingChat
    completion: ServingCompletion
    models: ServingModels


class ServerState:
    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.engine: AsyncEngine | None = None
        self.servings: Servings | None = None
        self.load_error: str | None = None
        self.is_draining = False
        self.num_in_flight = 0  # API requests whose response is not complete yet
        self.active_streams: set[GenerationStream] = set()  # engine requests started and not closed
        self.embedding: ServingEmbedding | None = None  # the embedding model, when one is served

    def attach_embedding(self, serving: ServingEmbedding) -> None:
        """Serve an embedding model (started) beside the chat model; call before attach_engine."""
        self.embedding = serving

    def attach_engine(self, engine: AsyncEngine) -> None:
        """Make the API available on a loaded, started engine."""
        self.metrics.attach_engine(engine.stats, engine.model_name)
        args = (engine, self.metrics, self.active_streams, self.config.log_content)
        self.servings = Servings(ServingChat(*args, context_strategy=self.config.context_strategy),
                                 ServingCompletion(*args),
                                 ServingModels(engine.model_name, engine.max_model_len))
        if self.embedding is not None:
            self.servings.models.add(self.embedding.model_name, self.embedding.model.max_input_tokens)
        self.engine = engine

    def unavailable(self) -> APIError | None:
        """Why the API cannot serve now (503), or None when it can."""
        if self.is_draining:
            return overloaded("the server is shutting down and admits no new requests", DRAIN_RETRY_AFTER_S)
        if self.load_error is not None:
            return APIError(503, f"the model failed to load: {self.load_error}")
        if self.engine is None:
            return APIError(503, "the model is still loading", headers={"Retry-After": "5"})
        if not self.engine.is_alive:
            return APIError(503, "the engine is not running")
        return None

    def ready(self) -> Servings:
        error = self.unavailable()
        if error is not None:
            raise error
        assert self.servings is not None
        return self.servings

    def check_generation_model(self, model: str | None) -> None:
        """A 400 when a chat/completions request names the embedding model."""
        if model is not None and self.embedding is not None and model == self.embedding.model_name:
            raise APIError(400, f"the model {model!r} is an embedding model: use /v1/embeddings, or "
                                f"{self.engine.model_name if self.engine else 'the chat model'!r} here", "model")

    def ready_embedding(self, model: str | None) -> ServingEmbedding:
        """The embedding serving object; 400 when `model` is the chat model, 404 when none is served."""
        servings = self.ready()
        if model is not None and model == servings.chat.model_name:
            raise APIError(400, f"the model {model!r} is a chat model and does not produce embeddings: use "
                                "/v1/chat/completions, or an embedding model on /v1/embeddings", "model")
        if self.embedding is None:
            raise APIError(404, "this server serves no embedding model (started with --embedding-model none)",
                           "model")
        return self.embedding

    def begin_drain(self) -> None:
        self.is_draining = True
        if self.engine is not None:
            self.engine.begin_drain()

    def abort_active(self) -> int:
        """Abort every engine request still running (each answers 503 / an error chunk); returns how many."""
        streams = list(self.active_streams)
        for stream in streams:
            stream.shut_down()
        return len(streams)
