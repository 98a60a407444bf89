"""What the gateway's OpenAPI document says of an operation that changes something: the events
it publishes (`x-gibsey-events`), that it needs the write token, and how it refuses."""

from __future__ import annotations

from typing import Any

EVENTS_EXT = "x-gibsey-events"


def publishes(*kinds: str) -> dict[str, Any]:
    """The `openapi_extra` of an operation that publishes `kinds` and needs the write token."""
    return {EVENTS_EXT: list(kinds), "security": [{"token": []}]}


def mutating(*kinds: str) -> dict[str, Any]:
    """Route arguments of an operation that changes something and publishes `kinds`."""
    return {
        "openapi_extra": publishes(*kinds),
        "responses": {
            401: {"description": "missing or wrong write token; nothing changed"},
            422: {"description": "the request is invalid; the error says why"},
        },
    }


def mutating_operations(openapi: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(method, path, declared event kinds) of every operation that is not a read."""
    out = []
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if method.lower() in ("post", "put", "patch", "delete"):
                out.append((method.upper(), path, list(op.get(EVENTS_EXT, []))))
    return out
