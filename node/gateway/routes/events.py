"""The events seen on the spine: the recent ones, and a live stream of server-sent events."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gibsey.core.envelope import PAYLOADS, Event
from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.responses import READ
from gibsey.node.gateway.sse import STREAM_HEADERS, event_json, sse
from gibsey.node.gateway.state import GatewayState, State

# A quiet stream sends a comment this often, and notices a client that went away.
HEARTBEAT_S = 15.0
# Live streams at once: in all (a gallery's dashboards, kiosks and Home Assistant need a few),
# and from one address (a browser's tabs).
MAX_STREAMS = 64
MAX_STREAMS_PER_CLIENT = 8

router = APIRouter(tags=["events"])


@router.get(
    "/api/events",
    summary="Recent events seen on the spine",
    response_model=list[Event],
    **READ,
)
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
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "a stream that stays open: `event: hello` (data: the node's id and "
            "its glyph, as /api/glyph), then for each event `event: <kind>` with `data:` its "
            "envelope on one line (as an item of /api/events), a `: keep-alive` comment when "
            "quiet, and `event: bye` (data: reason) when the node ends it",
        },
        429: {"description": f"{MAX_STREAMS_PER_CLIENT} live streams from this address already"},
        503: {"description": f"the node serves {MAX_STREAMS} live streams already"},
    },
)
async def stream(
    request: Request,
    gw: State,
    kinds: Annotated[str | None, Query(description="comma-separated kinds, default all")] = None,
    recent: Annotated[int, Query(ge=0, le=200)] = 0,
) -> Response:
    wanted = _kinds_of(kinds)
    client = request.client.host if request.client else "?"
    refused = _past_bounds(gw, client)
    if refused is not None:
        return refused
    return StreamingResponse(
        _stream(gw, request, wanted, recent, client),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


def _past_bounds(gw: GatewayState, client: str) -> Response | None:
    """A live stream holds a connection (a file descriptor) for as long as its client likes, and
    needs no token: bounded in all and by address, or a stranger's thousand streams take every
    descriptor the node has (its gateway stops answering, its accept loop fails over and over)."""
    streams = gw.hub.streams
    if streams[client] >= MAX_STREAMS_PER_CLIENT:
        why = f"{MAX_STREAMS_PER_CLIENT} live streams from {client} already: close one first"
        return JSONResponse({"error": why}, status_code=429)
    if sum(streams.values()) >= MAX_STREAMS and not _shed_for(gw, client, streams):
        why = f"the node serves {MAX_STREAMS} live streams already; try later"
        return JSONResponse({"error": why}, status_code=503)
    return None


def _shed_for(gw: GatewayState, client: str, streams: collections.Counter[str]) -> bool:
    """Every live stream is taken: the oldest of the address holding the most is ended for
    `client`, if that address would still hold more than `client` then (a fair share: 8
    addresses of a stranger's at 8 streams each held all 64, and every new dashboard got 503).
    A dashboard's one stream is never ended for anyone, and a stranger reopening from an
    address already at its share ends nothing. `streams`: each address's, as counted now."""
    address, most = max(streams.items(), key=lambda held: held[1])
    if most <= streams[client] + 1:
        return False
    gw.hub.end_stream(address, f"every live stream was taken, and {address} held the most")
    gw.refused(
        "http_stream_shed",
        f"all {MAX_STREAMS} live streams were taken: the oldest of {address}'s {most} was "
        f"ended for one to {client}",
    )
    return True


async def _stream(
    gw: GatewayState, request: Request, wanted: frozenset[str] | None, recent: int, client: str
) -> AsyncIterator[bytes]:
    # Subscribed here, when the response starts, not in the route: a generator never started
    # (its client gone before) never runs its `finally`, and would leave its subscriber behind.
    sub = gw.hub.subscribe(wanted)
    gw.hub.stream_opened(client, sub)
    backlog = [e for e in gw.hub.recent if wanted is None or e.kind in wanted]
    backlog = backlog[-recent:] if recent else []
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
                yield sse("bye", {"reason": sub.ended or "the node is stopping"})
                return
            yield sse(got.kind, event_json(got))
    finally:
        gw.hub.unsubscribe(sub)
        gw.hub.stream_closed(client, sub)
