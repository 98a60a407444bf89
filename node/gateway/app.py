"""The gateway's HTTP application (FastAPI): REST under /api/, live streams, metrics, dashboard.

Reading is open to anyone on the LAN; every endpoint that changes something needs the node's
write token (`Authorization: Bearer <token>` or `X-Gibsey-Token`; auth.py), publishes at least
one event on the spine (declared per operation in the OpenAPI document as `x-gibsey-events`;
openapi.py), and answers 401 without touching anything, and without reading the request's body,
when the token is wrong or missing (middleware.BodyGuard, which also bounds every body: 413).
GraphQL's mutations need the same token (graphql_route.py).
Errors are JSON objects with an `error` field that says what was wrong (errors.py).

This module only assembles the app: the endpoints are in routes/ (one router per OpenAPI tag),
and what they reach of the node is the `GatewayState` (state.py) kept in `app.state.gateway`.
"""

from __future__ import annotations

import asyncio
import importlib

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gibsey import __version__
from gibsey.node.gateway import errors
from gibsey.node.gateway.middleware import BodyGuard, MetricsMiddleware
from gibsey.node.gateway.openapi import document_security
from gibsey.node.gateway.routes import ROUTERS
from gibsey.node.gateway.routes.dashboard import STATIC
from gibsey.node.gateway.state import GatewayState


class LazyGraphQL:
    """/graphql's ASGI app, made at the first request: strawberry and graphql-core cost the
    daemon ~8 MiB resident and ~0.15 s to import, which a node nobody asks in GraphQL saves. The
    import runs in a worker thread, so the event loop (the spine, the dial) goes on meanwhile."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            name = "gibsey.node.gateway.graphql_route"
            module = await asyncio.to_thread(importlib.import_module, name)
            if self.app is None:  # another first request may have made it meanwhile
                self.app = module.StoryGraphQL(self.state)
        await self.app(scope, receive, send)


def build_app(state: GatewayState) -> FastAPI:
    app = FastAPI(
        title="Gibsey node gateway",
        version=__version__,
        description=(
            "REST for one Gibsey node. Reads are open; anything that changes state needs the "
            "node's write token and publishes the events named in `x-gibsey-events`."
        ),
        docs_url=None,  # Swagger UI loads from a CDN: a gallery has no internet
        redoc_url=None,
    )
    app.state.gateway = state
    # The last added is the outermost: metrics count what the body guard refuses too.
    app.add_middleware(BodyGuard, state=state)
    app.add_middleware(
        MetricsMiddleware, metrics=state.metrics, templates=lambda: app.openapi()["paths"]
    )
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    # A route, not a mount: /graphql itself answers (a mount would redirect to /graphql/).
    graphql = Route("/graphql", LazyGraphQL(state), methods=["GET", "POST"], name="graphql")
    app.router.routes.append(graphql)
    document_security(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
