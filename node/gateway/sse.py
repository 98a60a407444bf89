"""Server-sent events: how the gateway writes one event (or any JSON) onto a live stream."""

from __future__ import annotations

import json
from typing import Any

from gibsey.core.envelope import Event

# A stream's response headers: never cached, never buffered by a proxy in between.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def event_json(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json")
