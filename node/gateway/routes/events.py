"""The events seen on the spine: the recent ones, and a live stream of server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from gibsey.core.envelope import PAYLOADS, Event
from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.hub import Subscriber
from gibsey.node.gateway.sse import STREAM_HEADERS, event_json, sse
from gibsey.node.gateway.state import GatewayState, State

# A quiet stream sends a comment this often, and notices a client that went away.
HEARTBEAT_S = 15.0

router = APIRouter(tags=["events"])


@router.get("/api/events", summary="Recent events seen on the spine")
async def events(
    gw: State,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    kind: Annotated[str | None, Query(max_length=64)] = None,
) -> list[dict[str, Any]]:
    items = [e for e in gw.hub.recent if kind is None or e.kind == kind]
    return [event_json(e) for e in items[-limit:]]


def _kinds_of(kinds: str | None) -> frozenset[str] | None:
    """The kinds a client asked for (comma-separated); None for all of them."""
    if not kinds:
        return None
    wanted = frozenset(k.strip() for k in kinds.split(",") if k.strip())
    unknown = sorted(wanted - set(PAYLOADS))
    if unknown:
        raise ApiError(422, f"unknown event kind(s): {', '.join(unknown)}")
    return wanted


@router.get(
    "/api/events/stream",
    summary="Live events as server-sent events (event: <kind>, data: envelope)",
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
    gw: State,
    kinds: Annotated[str | None, Query(description="comma-separated kinds, default all")] = None,
    recent: Annotated[int, Query(ge=0, le=200)] = 0,
) -> StreamingResponse:
    wanted = _kinds_of(kinds)
    sub = gw.hub.subscribe(wanted)
    backlog = [e for e in gw.hub.recent if wanted is None or e.kind in wanted]
    backlog = backlog[-recent:] if recent else []
    return StreamingResponse(
        _stream(gw, request, sub, backlog), media_type="text/event-stream", headers=STREAM_HEADERS
    )


async def _stream(
    gw: GatewayState, request: Request, sub: Subscriber, backlog: list[Event]
) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n\n"
        yield sse("hello", {"node": gw.node.node_id, "glyph": gw.hub.glyph_view()})
        for event in backlog:
            yield sse(event.kind, event_json(event))
        while True:
            try:
                # asyncio.timeout: Python 3.11's wait_for drops a cancel landing with an item
                async with asyncio.timeout(HEARTBEAT_S):
                    got = await sub.queue.get()
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"
                continue
            if got is None:
                yield sse("bye", {"reason": "the node is stopping"})
                return
            yield sse(got.kind, event_json(got))
    finally:
        gw.hub.unsubscribe(sub)
