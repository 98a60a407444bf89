"""The glyph: the 64 symbols, the dial's current state, and turning the dial."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gibsey.core.envelope import Event, GlyphRotated
from gibsey.core.symbols import BY_SLUG, ROTATIONS, SYMBOLS
from gibsey.node.gateway.auth import Token
from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.models import RotateRequest, RotateResponse
from gibsey.node.gateway.openapi import mutating
from gibsey.node.gateway.responses import READ, GlyphView, SymbolsAnswer
from gibsey.node.gateway.state import GatewayState, State, refusal_of

RITUAL_TIMEOUT_S = 5.0

router = APIRouter(tags=["glyph"])


def symbol_of(value: int | str) -> int:
    """A base symbol's id, from its id or its slug."""
    if isinstance(value, int):
        if not 0 <= value < len(SYMBOLS):
            raise ApiError(422, f"symbol {value} is out of range 0..{len(SYMBOLS) - 1}")
        return value
    sym = BY_SLUG.get(value)
    if sym is None:
        if value.isdigit():
            return symbol_of(int(value))
        raise ApiError(422, f"unknown symbol {value!r} (0..63 or a slug like london-fox)")
    return sym.id


def rotation_of(value: int | str) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(ROTATIONS):
            raise ApiError(
                422, f"rotation {value} is out of range 0..3 (read/write/remember/dream)"
            )
        return value
    return ROTATIONS.index(value)


@router.get(
    "/api/symbols",
    summary="The 64 base symbols and 4 rotations",
    response_model=SymbolsAnswer,
    **READ,
)
async def symbols() -> dict[str, Any]:
    return {
        "rotations": list(ROTATIONS),
        "symbols": [
            {"id": s.id, "slug": s.slug, "colour": s.colour, "character": s.is_character}
            for s in SYMBOLS
        ],
    }


@router.get(
    "/api/glyph",
    summary="The dial's current glyph and rotation",
    response_model=GlyphView,
    **READ,
)
async def glyph(gw: State) -> dict[str, Any]:
    return gw.hub.glyph_view()


async def _rotate_and_wait(
    gw: GatewayState, payload: GlyphRotated, actor: str
) -> tuple[Event, bool, dict[str, Any] | None]:
    """Publish the turn and wait (briefly) for the ritual/performed this node runs for it; a turn
    the node refuses (over a flood bound) is answered 429 as soon as it is refused."""
    box: dict[str, str] = {}
    rituals = gw.node.parts.rituals
    refused = refusal_of(rituals.refusal_listeners if rituals is not None else None, box)
    sub = gw.hub.subscribe(
        frozenset({"ritual/performed"}),
        lambda e: e.node == gw.node.node_id and e.payload.get("cause") == box.get("id"),
    )
    performed = asyncio.ensure_future(sub.queue.get())
    try:
        event, acked = await gw.publish_with_id("glyph/rotated", payload, actor, box)
        either: list[asyncio.Future[Any]] = [performed, refused]
        await asyncio.wait(either, timeout=RITUAL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if refused.done():
            raise ApiError(429, f"the node refused the turn: {refused.result()}")
        got = performed.result() if performed.done() else None
        return event, acked, dict(got.payload) if got is not None else None
    finally:
        performed.cancel()
        refused.cancel()
        gw.hub.unsubscribe(sub)


@router.post(
    "/api/glyph/rotate",
    summary="Turn the glyph dial (publishes glyph/rotated; the node runs the ritual)",
    status_code=202,
    **mutating("glyph/rotated", throttled=True),
)
async def rotate(
    body: RotateRequest,
    _: Token,
    gw: State,
    wait: Annotated[
        bool,
        Query(description="wait for the ritual/performed and return it (429 if refused)"),
    ] = False,
) -> RotateResponse:
    symbol, rotation = symbol_of(body.symbol), rotation_of(body.rotation)
    payload = GlyphRotated(symbol=symbol, rotation=rotation, source=body.source)
    ritual: dict[str, Any] | None = None
    if wait:
        event, acked, ritual = await _rotate_and_wait(gw, payload, body.actor)
    else:
        event, acked = await gw.publish("glyph/rotated", payload, body.actor)
    return RotateResponse(
        event=event.id,
        kind="glyph/rotated",
        acked=acked,
        symbol=symbol,
        rotation=rotation,
        state=symbol * 4 + rotation,
        ritual=ritual,
    )
