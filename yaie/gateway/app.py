"""Wiring the gateway into the server's FastAPI app (called by `yaie.server.app.build_app`)."""

from __future__ import annotations

from fastapi import FastAPI

from yaie.gateway.admin import install_admin
from yaie.gateway.metrics import GatewayMetrics
from yaie.gateway.middleware import GatewayMiddleware
from yaie.gateway.service import Gateway
from yaie.server.state import ServerState


def install_gateway(app: FastAPI, state: ServerState, gateway: Gateway) -> None:
    """Add the gateway middleware (call before the server's request middleware is added, so that it runs
    inside it), the /admin routes and the gateway's metrics."""
    gateway.metrics = GatewayMetrics(state.metrics.registry)
    app.add_middleware(GatewayMiddleware, gateway=gateway, state=state)
    install_admin(app, gateway)
