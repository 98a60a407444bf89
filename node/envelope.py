"""The one event envelope and a payload schema per event kind, defined once, here.

Every event on the spine is JSON of the shape

    {"id": ..., "node": ..., "kind": "glyph/rotated", "lamport": 7,
     "wall": 1764000000.5, "actor": "visitor", "payload": {...}}

`wall` is advisory only: a Pi has no real-time clock and may boot in 1970, so nothing orders or
expires events by it; the Lamport clock orders them. `gibsey schema` prints these models as JSON
Schema for clients in other languages.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gibsey.node.topics import STATUS_KIND, parse_topic

NodeId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
ShortText = Annotated[str, Field(max_length=256)]
LongText = Annotated[str, Field(max_length=16_384)]
QdpiSymbol = Annotated[
    int, Field(ge=0, le=63, description="base symbol 0..63 (16 characters + 48 hidden)")
]
QdpiRotation = Annotated[int, Field(ge=0, le=3, description="0 Read, 1 Write, 2 Remember, 3 Dream")]
ROTATION_NAMES = ("read", "write", "remember", "dream")


class Payload(BaseModel):
    # Unknown fields are an error, not silently dropped: a typo in a dashboard's payload should
    # be reported, not ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class GlyphRotated(Payload):
    """The dial (real or virtual) moved to a QDPI state."""

    symbol: QdpiSymbol
    rotation: QdpiRotation
    source: ShortText = Field("dial", description="which dial or client turned it")


class RitualPerformed(Payload):
    """The node ran the program bound to a QDPI state."""

    symbol: QdpiSymbol
    rotation: QdpiRotation
    state: Annotated[int, Field(ge=0, le=255, description="symbol * 4 + rotation")]
    cause: ShortText = Field(description="id of the event that triggered the ritual")
    program: ShortText = Field("", description="name or hash of the program that ran")
    effects: Annotated[int, Field(ge=0)] = 0


class AgentRequest(Payload):
    persona: ShortText
    prompt: LongText
    reply_to: ShortText | None = Field(
        None, description="topic for the answer (MQTT 3.1.1 clients)"
    )
    correlation: ShortText | None = None
    max_tokens: Annotated[int, Field(ge=1, le=2048)] = 128


class AgentEmit(Payload):
    persona: ShortText
    correlation: ShortText | None = None
    seq: Annotated[int, Field(ge=0)]
    text: LongText
    final: bool = False


class NarrativeChange(Payload):
    branch: ShortText
    page: ShortText | None = None
    version: ShortText | None = Field(None, description="content hash of the page version")
    change: Literal["write", "branch", "merge", "propose"]


class SafetyAlert(Payload):
    """Something was rejected or went wrong; `reason` says what, in words."""

    reason: ShortText
    detail: LongText = ""
    topic: ShortText | None = None
    severity: Literal["info", "warning", "critical"] = "warning"


class GiftTxn(Payload):
    giver: ShortText
    receiver: ShortText
    amount: Annotated[int, Field(gt=0)]
    value: Annotated[int, Field(ge=0)] | None = Field(None, description="value after the curve")
    entry: ShortText | None = Field(None, description="ledger entry hash")


PAYLOADS: dict[str, type[Payload]] = {
    "glyph/rotated": GlyphRotated,
    "ritual/performed": RitualPerformed,
    "agent/request": AgentRequest,
    "agent/emit": AgentEmit,
    "narrative/change": NarrativeChange,
    "safety/alert": SafetyAlert,
    "gift/txn": GiftTxn,
}


class Event(BaseModel):
    """The envelope every event travels in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=64)]
    node: NodeId
    kind: Annotated[str, Field(pattern=r"^[a-z_]+/[a-z_]+$")]
    lamport: Annotated[int, Field(ge=0, lt=2**63)]
    wall: float = Field(description="sender's wall clock, seconds since the epoch; advisory only")
    actor: ShortText = "node"
    payload: dict[str, Any]

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in PAYLOADS:
            raise ValueError(f"unknown event kind {kind!r}")
        return kind

    def typed_payload(self) -> Payload:
        return PAYLOADS[self.kind].model_validate(self.payload)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()


class NodeStatus(BaseModel):
    """Retained on gibsey/v1/<node>/node/status; the broker's last will sets state=offline."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["online", "offline"]
    node: NodeId
    version: str = ""
    broker: str = ""
    events_per_s: float = 0.0
    uptime_s: float = 0.0
    events_total: int = 0
    rejected_total: int = 0


def new_event_id() -> str:
    return uuid.uuid4().hex


def make_event(node: str, kind: str, payload: Payload, lamport: int, actor: str = "node") -> Event:
    expected = PAYLOADS[kind]
    if not isinstance(payload, expected):
        raise TypeError(f"{kind} takes a {expected.__name__} payload, not {type(payload).__name__}")
    return Event(
        id=new_event_id(),
        node=node,
        kind=kind,
        lamport=lamport,
        wall=time.time(),
        actor=actor,
        payload=payload.model_dump(mode="json"),
    )


class Rejection(ValueError):
    """An incoming message that is not a valid event. `reason` is a short, countable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{where}: {err['msg']} ({len(exc.errors())} error(s))"


def parse_event(topic: str, raw: bytes, max_payload: int) -> tuple[Event, Payload]:
    """Validate one MQTT message as an event; raise Rejection saying what is wrong."""
    if len(raw) > max_payload:
        raise Rejection("too_large", f"{len(raw)} bytes, the limit is {max_payload}")
    parsed = parse_topic(topic)
    if parsed is None:
        raise Rejection("bad_topic", f"{topic!r} is not gibsey/v1/<node>/<domain>/<event>")
    if parsed.kind not in PAYLOADS:
        raise Rejection("unknown_kind", f"no event kind {parsed.kind!r} (topic {topic})")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejection("malformed_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise Rejection("malformed_json", f"expected a JSON object, got {type(doc).__name__}")
    try:
        event = Event.model_validate(doc)
    except ValidationError as exc:
        raise Rejection("bad_envelope", _first_error(exc)) from None
    if event.kind != parsed.kind or event.node != parsed.node_id:
        raise Rejection(
            "topic_mismatch",
            f"envelope says {event.node}/{event.kind} but topic is {parsed.node_id}/{parsed.kind}",
        )
    try:
        payload = event.typed_payload()
    except ValidationError as exc:
        raise Rejection("bad_payload", f"{event.kind}: {_first_error(exc)}") from None
    return event, payload


def json_schemas() -> dict[str, Any]:
    """One JSON Schema document: the envelope, each kind's payload, and node/status."""
    kinds: dict[str, Any] = {}
    for kind, model in PAYLOADS.items():
        envelope = Event.model_json_schema()
        envelope["title"] = f"Event {kind}"
        envelope["properties"]["kind"] = {"const": kind, "title": "Kind", "type": "string"}
        envelope["properties"]["payload"] = model.model_json_schema()
        kinds[kind] = envelope
    kinds[STATUS_KIND] = NodeStatus.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Gibsey node events, topic gibsey/v1/<node_id>/<kind>",
        "kinds": kinds,
    }
