"""The node: identity, broker connection, parts, glyph, router statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gibsey.core.envelope import PAYLOADS
from gibsey.node.gateway.responses import READ, StatusAnswer
from gibsey.node.gateway.state import State

router = APIRouter(tags=["node"])


@router.get(
    "/api/status",
    summary="The node: identity, broker, parts, glyph",
    response_model=StatusAnswer,
    **READ,
)
async def status(gw: State) -> dict[str, Any]:
    node = gw.node
    stats = node.router.stats
    spine = node.spine
    return {
        **node.status().model_dump(),
        "connected": bool(spine and spine.connected),
        "parts": gw.parts(),
        "glyph": gw.hub.glyph_view(),
        "router": {
            "accepted": stats.accepted,
            "duplicates": stats.duplicates,
            "rejected": dict(stats.rejected),
            "queue_depth": node.router.queue_depth(),
        },
        "rituals": _rituals(gw),
        "writable": gw.token is not None,
        "kinds": sorted(PAYLOADS),
    }


def _rituals(gw: State) -> dict[str, Any]:
    """Turns performed and refused (no reply: a flood), and the node's bound on visitors."""
    handler = gw.node.parts.rituals
    inputs = gw.node.inputs
    return {
        "performed": handler.performed if handler is not None else 0,
        "refused": handler.refused if handler is not None else 0,
        "inputs_per_second": inputs.per_second,
        "inputs_per_source_per_second": inputs.per_source_per_second,
    }
