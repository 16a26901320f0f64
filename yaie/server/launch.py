"""`yaie serve`: settings -> HTTP server up at once -> model loaded in the background -> serve -> drain -> exit 0.

The port answers from the first second (503 on /health while the model loads). When the engine is ready the
log says where (URL) and how much fits (KV-cache tokens, max concurrency). On SIGTERM/SIGINT the server stops
admitting (503 + Retry-After), lets in-flight requests finish for up to --shutdown-timeout seconds, aborts the
rest (streams get an error chunk), shuts the engine down and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from yaie.event_loop import run_event_loop
from yaie.server.settings import SettingsError, add_settings_arguments, cli_values, load_settings

if TYPE_CHECKING:
    import uvicorn

    from yaie.config import EngineConfig
    from yaie.embeddings.config import EmbeddingConfig
    from yaie.engine.async_engine import AsyncEngine
    from yaie.gateway.config import GatewayConfig
    from yaie.gateway.service import Gateway
    from yaie.server.draining import DrainingServer
    from yaie.server.settings import ServerConfig, ServeSettings
    from yaie.server.state import ServerState

logger = logging.getLogger("yaie.server")
T = TypeVar("T")


def add_serve_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="Run the OpenAI-compatible HTTP server.",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                    "/v1/models, /health, /metrics). Each option can also come from the environment "
                    "(YAIE_<NAME>) or a YAML file (--config); precedence: command line > environment > YAML > "
                    "default.",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(cli_values(args), args.config)
        gateway_config = _gateway_config(settings, args)
    except (SettingsError, ValueError) as exc:
        print(f"yaie serve: {exc}", file=sys.stderr)
        return 2
    from yaie.server.access_log import configure_logging

    configure_logging(settings.log_level)
    return run_event_loop(serve(settings.engine_config(), settings.server_config(), settings.embedding_config(),
                                gateway_config))



def _gateway_config(settings: ServeSettings, args: argparse.Namespace) -> GatewayConfig | None:
    """The gateway's config when --gateway-config or a `gateway:` section of --config is given, else None."""
    from yaie.gateway.config import serve_gateway_config

    config_path = args.config or (Path(os.environ["YAIE_CONFIG"]) if os.environ.get("YAIE_CONFIG") else None)
    return serve_gateway_config(settings.gateway_config, config_path, settings.data_dir, settings.api_key)


async def serve(engine_config: EngineConfig, server_config: ServerConfig,
                embedding_config: EmbeddingConfig | None = None, gateway_config: GatewayConfig | None = None) -> int:
    """Run until a signal (exit 0) or a failed model load (exit 1). `embedding_config` None: no embeddings."""
    import uvicorn

    from yaie.server.app import build_app, server_state
    from yaie.server.draining import DrainingServer

    gateway = await _open_gateway(gateway_config) if gateway_config is not None else None
    app = build_app(None, server_config, gateway)
    state = server_state(app)
    uv_config = uvicorn.Config(app, host=server_config.host, port=server_config.port, access_log=False,
                               log_level=server_config.log_level, timeout_graceful_shutdown=5, lifespan="off")
    server = DrainingServer(uv_config, state, server_config.shutdown_timeout_s)
    loader = asyncio.ensure_future(_load_engine(engine_config, server, state, embedding_config))
    try:
        await server.serve()
    finally:
        loader.cancel()
        if state.embedding is not None:
            await state.embedding.close()
        if state.engine is not None:
            await state.engine.shutdown()
        if gateway is not None:
            await gateway.close()  # flushes the ledger: a clean shutdown loses no usage row
    logger.info("yaie serve stopped")
    return server.exit_code


async def _open_gateway(config: GatewayConfig) -> Gateway:
    from yaie.gateway.service import Gateway

    gateway = await Gateway.open(config)
    await gateway.start()
    logger.info("gateway on: database %s, rate-limit storage %s", config.url.split("@")[-1],
                config.rate_limit_storage.split("@")[-1])
    return gateway


async def _load_engine(engine_config: EngineConfig, server: DrainingServer, state: ServerState,
                       embedding_config: EmbeddingConfig | None = None) -> None:
    logger.info("loading model %s", engine_config.model.model or "(default SmolLM2-135M-Instruct)")
    embedding = None
    try:
        # torch and transformers take seconds to import: on a loader thread, so /health answers meanwhile, and
        # before the embedding model's load starts (imports in two threads at once only contend for the GIL)
        engine_class = await _in_daemon_thread(_import_engine)
        if embedding_config is not None:
            embedding = asyncio.ensure_future(_load_embedding(embedding_config, state))
        engine = await _in_daemon_thread(lambda: engine_class(engine_config))
        if embedding is not None:
            await embedding
    except Exception as exc:
        logger.error("could not load the model: %s", exc)
        state.load_error = str(exc)
        server.exit_code = 1
        server.should_exit = True
        return
    if server.should_exit or state.is_draining:
        return
    engine.start()
    state.attach_engine(engine)
    while not server.started:
        await asyncio.sleep(0.05)
    _log_ready(server, engine, engine_config)


def _import_engine() -> type[AsyncEngine]:
    from yaie.engine.async_engine import AsyncEngine

    return AsyncEngine


async def _load_embedding(config: EmbeddingConfig, state: ServerState) -> None:
    """Load the embedding model (beside the chat model's load) and serve it; raises if it cannot load."""
    from yaie.embeddings.model import EmbeddingModel
    from yaie.server.serving_embedding import ServingEmbedding

    model = await _in_daemon_thread(lambda: EmbeddingModel.load(config))
    serving = ServingEmbedding(model, config, state.metrics.registry)
    serving.start()
    state.attach_embedding(serving)


def _log_ready(server: uvicorn.Server, engine: Any, engine_config: EngineConfig) -> None:
    stats = engine.stats()
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    logger.info(
        "yaie serve ready at http://%s:%d/v1 — model %s, context %d tokens, KV cache %d tokens "
        "(%d blocks x %d), max concurrency %.1f requests at full context (max_num_seqs %d)",
        host, port, engine.model_name, engine.max_model_len, stats.kv_capacity_tokens, stats.num_blocks,
        stats.block_size, stats.kv_capacity_tokens / engine.max_model_len, engine_config.scheduler.max_num_seqs)


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a daemon thread (a load still running at exit does not hold the process)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while we loaded
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=target, name="yaie-load", daemon=True).start()
    return await future
