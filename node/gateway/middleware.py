"""The gateway's ASGI middleware: request metrics (every request counted, and its latency to
the response head, by route), and the body guard (a write's token before its body, every body
bounded in size and in time)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gibsey.node.gateway.tokens import refusal

if TYPE_CHECKING:
    from gibsey.node.gateway.scrape import Metrics
    from gibsey.node.gateway.state import GatewayState

# The largest request body the gateway reads. Every write is a small JSON object (an event
# payload is at most 64 KiB) or a GraphQL document; a page of the story fits many times over.
MAX_BODY_BYTES = 256 * 1024
# A body, once its head is whole (uvicorn_lean.py times the head), has this long to arrive:
# 256 KiB in 30 s is 8.7 KB/s, slower than any Wi-Fi a client can use. Only a client that
# trickles a body on purpose comes near it, holding a connection and a request slot meanwhile.
BODY_TIMEOUT_S = 30.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# POSTs that may be reads: a GraphQL query. Its mutations need the same token, checked by the
# schema before anything runs (graphql_route.py); its body is bounded all the same.
OPEN_POSTS = frozenset({"/graphql"})


def route_template(scope: Scope) -> str:
    """The matched route's path template (/api/ledger/proposals/{proposal}/votes), so that the
    metrics' label set stays small whatever the clients ask for; "" if routing did not run."""
    route = scope.get("route")
    if isinstance(route, Route | Mount) and route.path:
        return route.path
    return ""


class MetricsMiddleware:
    """Counts and times every request by method, route template and status.

    A request answered before routing (a write BodyGuard refused 401, its body unread) has no
    route in its scope: its path is matched here against the templates the app documents
    (`templates`, read once, at the first such request). An outside tester saw every refused
    write counted as `unmatched`, so /metrics could not say which route a stranger probed."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, templates: Callable[[], Iterable[str]] = tuple
    ) -> None:
        self.app = app
        self.metrics = metrics
        self._templates = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _template_of(self, path: str) -> str:
        if self._compiled is None:
            self._compiled = [(compile_path(t)[0], t) for t in self._templates()]
        for pattern, template in self._compiled:
            if pattern.match(path):
                return template
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = time.perf_counter() - start
                path = route_template(scope) or self._template_of(scope["path"])
                self.metrics.http.served(scope["method"], path, int(message["status"]), took)
            await send(message)

        await self.app(scope, receive, sending)


class _Gone(Exception):
    """The client went away while sending its body: nobody is left to answer."""


def _declared_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None  # chunked (or a length uvicorn already refused): counted as it streams


class BodyGuard:
    """Checks a write's token before its body is read, and bounds every body.

    A write (POST, PUT, PATCH, DELETE, bar OPEN_POSTS) without the right token is answered 401
    and its body is never read (uvicorn discards it as it arrives, holding none of it); a
    declared Content-Length over the bound is answered 413, unread; a body streamed past the
    bound (chunked, or a lying length) is answered 413 as soon as it passes it; a body not whole
    BODY_TIMEOUT_S after its head is answered 408 and its connection closed. A body within
    the bound is read here and handed on whole, so nothing behind this reads more. Endpoints
    check the token again (auth.Token): a route can never be reached without it."""

    def __init__(
        self,
        app: ASGIApp,
        state: GatewayState,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] in WRITE_METHODS and scope["path"] not in OPEN_POSTS:
            reason = refusal(headers, self.state.token)
            if reason is not None:
                await self._refuse(scope, send, 401, reason)
                return
        if "content-length" not in headers and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (a GET; a live stream's disconnect)
            return
        declared = _declared_length(headers)
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = None if (declared or 0) > self.max_body_bytes else await self._read(receive)
        except _Gone:
            return
        except TimeoutError:
            await self._refuse(scope, send, 408, self._too_slow())
            return
        if body is None:
            await self._refuse(scope, send, 413, self._too_large(declared))
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the bound (the rest is left unread)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, declared: int | None) -> str:
        size = f"{declared:,} bytes" if declared is not None else "a streamed body"
        return (
            f"the request body is too large ({size}): the node reads at most "
            f"{self.max_body_bytes:,} bytes"
        )

    def _too_slow(self) -> str:
        return (
            f"the request body did not arrive within {BODY_TIMEOUT_S:g} s of its head: "
            "the connection is closed"
        )

    async def _refuse(self, scope: Scope, send: Send, status: int, error: str) -> None:
        client = scope.get("client") or ("?", 0)
        label = _REFUSAL_LABELS[status]
        self.state.refused(label, f"{scope['method']} {scope['path']} from {client[0]}: {error}")
        headers = _REFUSAL_HEADERS.get(status)
        response = JSONResponse({"error": error}, status_code=status, headers=headers)
        await response(scope, _no_body, send)


_REFUSAL_LABELS = {401: "http_unauthorized", 408: "http_slow_request", 413: "http_too_large"}
# A 408's body is still arriving, or never will: the connection cannot serve another request.
_REFUSAL_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 408: {"Connection": "close"}}


async def _no_body() -> Message:
    # A refused request's body is never read; a response that asks gets an end of stream.
    return {"type": "http.request", "body": b"", "more_body": False}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then whatever the connection says next
    (a disconnect, for a streaming response that listens for one)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
