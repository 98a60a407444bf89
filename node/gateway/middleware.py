"""Request metrics: every request counted, and its latency to the response head, by route."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from gibsey.node.gateway.metrics import Metrics


def route_template(scope: Scope) -> str:
    """The matched route's path template (/api/ledger/proposals/{proposal}/votes), so that the
    metrics' label set stays small whatever the clients ask for."""
    route = scope.get("route")
    if isinstance(route, Route | Mount) and route.path:
        return route.path
    return "unmatched"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                path = route_template(scope)
                self.metrics.latency.labels(path).observe(time.perf_counter() - start)
                self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            await send(message)

        await self.app(scope, receive, sending)
