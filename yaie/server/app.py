"""The FastAPI application: thin routes over the serving classes, which talk to the AsyncEngine.

`build_app(engine, config)` works with `engine=None` (the launcher starts HTTP first and attaches the engine
with `attach_engine` once loaded); until then the API answers 503 and /health says the model is loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from yaie import __version__
from yaie.server.access_log import STATUS_CLIENT_CLOSED, RequestContext
from yaie.server.errors import error_response, install_exception_handlers
from yaie.server.metrics import CONTENT_TYPE, ServerMetrics
from yaie.server.middleware import RequestMiddleware
from yaie.server.protocol import ChatCompletionRequest, CompletionRequest, ModelList
from yaie.server.protocol_embeddings import EmbeddingRequest
from yaie.server.serving_base import ClientDisconnected
from yaie.server.settings import ServerConfig
from yaie.server.state import ServerState

if TYPE_CHECKING:
    from yaie.engine.async_engine import AsyncEngine
    from yaie.gateway.service import Gateway


async def _state(request: Request) -> ServerState:  # async: FastAPI runs a sync dependency on a thread
    return request.app.state.yaie


async def _context(request: Request) -> RequestContext:
    return request.scope["yaie.context"]


StateDep = Annotated[ServerState, Depends(_state)]
ContextDep = Annotated[RequestContext, Depends(_context)]

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: StateDep,
                                 ctx: ContextDep) -> Response:
    state.check_generation_model(body.model)
    return await state.ready().chat.create(body, request.receive, ctx)


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, state: StateDep,
                            ctx: ContextDep) -> Response:
    state.check_generation_model(body.model)
    return await state.ready().completion.create(body, request.receive, ctx)


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(body: EmbeddingRequest, state: StateDep) -> Response:
    result = await state.ready_embedding(body.model).create(body)
    return Response(result.model_dump_json(), media_type="application/json")


@router.get("/v1/models")
async def list_models(state: StateDep) -> ModelList:
    return state.ready().models.list()


@router.get("/health", response_model=None)
async def health(state: StateDep) -> Response:
    error = state.unavailable()
    return error_response(error) if error is not None else JSONResponse({"status": "ok"})


@router.get("/metrics", response_model=None)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


async def _on_client_disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=STATUS_CLIENT_CLOSED)


def build_app(engine: AsyncEngine | None, config: ServerConfig, gateway: Gateway | None = None) -> FastAPI:
    """The app for `engine` (already started), or for one to be attached later with `attach_engine`."""
    app = FastAPI(title="YAIE OpenAI-compatible server", version=__version__)
    state = ServerState(config, ServerMetrics())
    app.state.yaie = state
    install_exception_handlers(app)
    app.add_exception_handler(ClientDisconnected, _on_client_disconnected)
    if gateway is not None:  # added first, so it runs inside RequestMiddleware (request id, context, body limit)
        from yaie.gateway.app import install_gateway

        install_gateway(app, state, gateway)
    app.add_middleware(RequestMiddleware, state=state)
    app.include_router(router)
    if engine is not None:
        state.attach_engine(engine)
    return app


def server_state(app: FastAPI) -> ServerState:
    return app.state.yaie


def attach_engine(app: FastAPI, engine: AsyncEngine) -> None:
    server_state(app).attach_engine(engine)
