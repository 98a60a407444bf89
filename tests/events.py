"""Build raw event messages the way an outside client (a dial, a dashboard) would."""

from __future__ import annotations

import json
import uuid
from typing import Any

from nacl.signing import SigningKey

from gibsey.core.operator import sign_change


def raw_event(
    node: str,
    kind: str,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    lamport: int = 1,
    actor: str = "visitor",
) -> bytes:
    return json.dumps(
        {
            "id": event_id or uuid.uuid4().hex,
            "node": node,
            "kind": kind,
            "lamport": lamport,
            "wall": 0.0,
            "actor": actor,
            "payload": payload,
        }
    ).encode()


def topic(node: str, kind: str) -> str:
    return f"gibsey/v1/{node}/{kind}"


def signed_event(
    node: str,
    kind: str,
    payload: dict[str, Any],
    key: SigningKey,
    *,
    event_id: str | None = None,
    lamport: int = 1,
    actor: str = "operator",
) -> bytes:
    """An operator's change (`vm/load`, `agent/reload`) signed with `key` (core/operator.py)."""
    eid = event_id or uuid.uuid4().hex
    signed = sign_change(key, eid, node, kind, lamport, payload)
    return raw_event(node, kind, signed, event_id=eid, lamport=lamport, actor=actor)
