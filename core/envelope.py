"""The one event envelope and a payload schema per event kind, defined once, here.

Every event on the spine is JSON of the shape

    {"id": ..., "node": ..., "kind": "glyph/rotated", "lamport": 7,
     "wall": 1764000000.5, "actor": "visitor", "payload": {...}}

and, for a traced turn only, `"trace": "00-<trace id>-<span id>-01"` (W3C traceparent) before
`payload`: absent by default, so events without it stay valid both ways (core/trace.py).

`wall` is advisory only: a Pi has no real-time clock and may boot in 1970, so nothing orders or
expires events by it; the Lamport clock orders them. `gibsey schema` prints these models as JSON
Schema for clients in other languages.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gibsey.core import trace as _trace
from gibsey.core.actors import ACTOR_RE, ACTOR_RULE, Actor
from gibsey.core.topics import STATUS_KIND, ParsedTopic, parse_topic
from gibsey.core.trace import Traceparent

NodeId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
ShortText = Annotated[str, Field(max_length=256)]
LongText = Annotated[str, Field(max_length=16_384)]
QdpiSymbol = Annotated[
    int, Field(ge=0, le=63, description="base symbol 0..63 (16 characters + 48 hidden)")
]
QdpiRotation = Annotated[int, Field(ge=0, le=3, description="0 Read, 1 Write, 2 Remember, 3 Dream")]
# An operator's proof on a change (core/operator.py): the hex ed25519 key and its signature.
OperatorKey = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$", description="operator's key")]
OperatorSignature = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{128}$")]
MAX_WALL_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime can hold
# The actor of the node's own dial turns (the dial bridge's glyph/rotated and dial/pressed): a
# dial is told from another by the payload's `source`, its id.
DIAL_ACTOR = "dial"


class Payload(BaseModel):
    # Unknown fields are an error, not silently dropped: a typo in a dashboard's payload should
    # be reported, not ignored. NaN and the infinities (JSON's `NaN`/`Infinity` literals, which
    # the parser takes) are no measurement: refused in every payload. Strict, as the envelope
    # is: a field is of the JSON type `gibsey schema` gives it (an outside tester's "symbol":
    # "3" and "rotation": true were performed as 3 and Write); an integer may fill a number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


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
    effects: Annotated[int, Field(ge=0)] = Field(0, description="effects the program made")
    fuel: Annotated[int, Field(ge=0)] = Field(0, description="VM fuel the program spent")
    error: ShortText = Field("", description="why the program stopped, if it failed")


class RitualEffect(Payload):
    """An EMIT from a glyph's program: a named signal for dashboards and installations."""

    name: ShortText = Field(description="the program's topic constant, e.g. glyph/read")
    value: int | None = None
    text: LongText | None = None
    cause: ShortText = Field(description="id of the glyph/rotated event")


class RitualRebirth(Payload):
    """The node died and came back: the death-rebirth ritual."""

    uptime_s: Annotated[float, Field(ge=0)] = Field(
        description="how long the dead run lived, at least (up to its last heartbeat)"
    )
    cause: ShortText = Field(description="signal KILL, watchdog, exit 1, or unknown")
    restarts: Annotated[int, Field(ge=0)] = Field(description="deaths within the crash window")
    window_minutes: Annotated[float, Field(gt=0)]
    previous_pid: Annotated[int, Field(ge=0)] = 0
    entry: ShortText | None = Field(None, description="ledger entry hash")
    hearing: ShortText | None = Field(None, description="proposal opened for a crash loop")


class VmLoad(Payload):
    """A command: bind a program to a QDPI state (verified before anything changes)."""

    symbol: QdpiSymbol
    rotation: QdpiRotation
    bytecode: Annotated[str, Field(max_length=60_000, description="the program, base64")]
    source: LongText | None = None
    operator: OperatorKey | None = None
    signature: OperatorSignature | None = None


class VmLoaded(Payload):
    symbol: QdpiSymbol
    rotation: QdpiRotation
    program: ShortText = Field(description="sha256 of the bytecode")
    version: Annotated[int, Field(ge=1)]
    cause: ShortText | None = None


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


class AgentReload(Payload):
    """A command: load another GGUF model beside the serving one, swap only if it loaded."""

    path: ShortText = Field(description="GGUF file on the node; empty means the default model")
    reply_to: ShortText | None = Field(None, description="topic for the agent/reloaded answer")
    correlation: ShortText | None = None
    operator: OperatorKey | None = None
    signature: OperatorSignature | None = None


# AgentReloaded.error begins so when the node refused the change itself (a key it does not
# list as an operator's, a bad signature); that answer goes only to the request's reply_to.
RELOAD_REFUSED = "refused: "


class AgentReloaded(Payload):
    """The outcome of an agent/reload (ok=False: the old model is still serving; an error
    beginning "refused: ": the node refused the request, answered only on its reply_to)."""

    ok: bool
    path: ShortText = Field(description="the model now serving")
    requested: ShortText = ""
    error: ShortText = ""
    correlation: ShortText | None = None


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
    type: Literal["gift", "mint", "burn"] = "gift"
    giver: ShortText = Field("", description="empty for a mint")
    receiver: ShortText
    amount: Annotated[int, Field(gt=0)]
    value: Annotated[int, Field(ge=0)] | None = Field(None, description="value after the curve")
    entry: ShortText | None = Field(None, description="ledger entry hash")


class MeshPeer(Payload):
    """A mesh peer changed state (up, down, banned); `key` is its ed25519 public key (hex)."""

    key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    state: Literal["up", "down", "banned"]
    endpoint: ShortText = ""
    detail: ShortText = ""


class GiftBalance(Payload):
    """The balances of a node's view, as announced by `gibsey ledger balance`."""

    balances: dict[Annotated[str, Field(max_length=256)], int] = Field(max_length=500)
    supply: int
    truncated: bool = Field(False, description="more actors exist than are listed")


class DialPressed(Payload):
    """The dial's button was pressed (short) or held (long: the board cycles its base symbol)."""

    symbol: QdpiSymbol
    rotation: QdpiRotation
    press: Literal["short", "long"] = "short"
    source: ShortText = Field("dial", description="which dial was pressed")


class HearingOpened(Payload):
    """A proposal was appended to this node's ledger feed: a Schrödinger hearing opened."""

    proposal: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="entry hash")]
    action: ShortText
    target: ShortText
    title: ShortText
    proposer: ShortText


class HearingVote(Payload):
    """A vote on a hearing was appended to this node's ledger feed."""

    proposal: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    actor: ShortText
    choice: ShortText
    entry: ShortText = Field(description="hash of the vote entry")


PAYLOADS: dict[str, type[Payload]] = {
    "glyph/rotated": GlyphRotated,
    "dial/pressed": DialPressed,
    "ritual/performed": RitualPerformed,
    "agent/request": AgentRequest,
    "agent/emit": AgentEmit,
    "agent/reload": AgentReload,
    "agent/reloaded": AgentReloaded,
    "narrative/change": NarrativeChange,
    "safety/alert": SafetyAlert,
    "gift/txn": GiftTxn,
    "gift/balance": GiftBalance,
    "ritual/effect": RitualEffect,
    "ritual/rebirth": RitualRebirth,
    "vm/load": VmLoad,
    "vm/loaded": VmLoaded,
    "mesh/peer": MeshPeer,
    "hearing/opened": HearingOpened,
    "hearing/vote": HearingVote,
}


class Event(BaseModel):
    """The envelope every event travels in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="the event's id, unique (a replay under the same id is dropped)"
    )
    node: NodeId = Field(description="the node that sent it")
    kind: Annotated[str, Field(pattern=r"^[a-z_]+/[a-z_]+$")] = Field(
        description="what happened, e.g. glyph/rotated: it says the payload's fields"
    )
    # Strict: `true` is not the timestamp 1, nor "7" the timestamp 7.
    lamport: Annotated[int, Field(ge=0, lt=2**63, strict=True)] = Field(
        description="the sender's Lamport time: orders events across nodes"
    )
    # Advisory, but a time: finite, not before 1970, not after the last second of year 9999
    # (so any reader can turn it into a date); strict, so `true` or "nan" is no time.
    wall: Annotated[float, Field(ge=0.0, le=MAX_WALL_S, strict=True, allow_inf_nan=False)] = Field(
        description="sender's wall clock, seconds since the epoch; advisory only"
    )
    actor: Actor = Field("node", description="who acted: a visitor, a persona, the node")
    # Optional, and absent (not null) unless the turn is traced: old events and clients stay
    # valid, and an untraced event's JSON is what it always was.
    trace: Traceparent | None = Field(
        None, exclude_if=lambda trace: trace is None, description="absent unless traced"
    )
    payload: dict[str, Any] = Field(
        description="the kind's payload (`gibsey schema` prints each kind's JSON Schema)"
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in PAYLOADS:
            raise ValueError(f"unknown event kind {kind!r}")
        return kind

    def typed_payload(self) -> Payload:
        return PAYLOADS[self.kind].model_validate(self.payload)

    def to_bytes(self) -> bytes:
        # pydantic's serializer (Rust) is ~4x faster than model_dump + json.dumps; compact JSON.
        return self.model_dump_json().encode()


class NodeStatus(BaseModel):
    """Retained on gibsey/v1/<node>/node/status; the broker's last will sets state=offline."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["online", "offline"] = Field(
        description="online; offline is the broker's last will for a node gone"
    )
    node: NodeId = Field(description="the node's id (its topics' gibsey/v1/<node>/...)")
    version: str = Field("", description="the node's software version")
    broker: str = Field("", description="the MQTT broker the node is connected to (a URL)")
    events_per_s: float = Field(0.0, description="events accepted per second, lately")
    uptime_s: float = Field(0.0, description="seconds since the node started")
    events_total: int = Field(0, description="events accepted since the node started")
    rejected_total: int = Field(0, description="events refused (invalid, forged) since start")
    broker_connects: int = Field(
        0, description="connections to the broker since start: more than 1, it went away"
    )
    # What the node dropped, by where (also in /metrics, and said in a rate-limited safety/alert):
    outbox_dropped: int = Field(
        0, description="messages dropped from a full outbox (the broker away, or slower)"
    )
    handler_dropped: int = Field(
        0, description="events dropped from a part's full handler queue (node/spine/router.py)"
    )
    throttled: int = Field(
        0, description="visitors' turns and questions refused by the flood throttle"
    )
    # Mints and gifts of turns performed, not yet committed and announced (gift/txn): they wait
    # for their group commit ([node] ledger_group_wait_s). A gallery converges once all are 0.
    ledger_pending: int = Field(
        0, description="mints and gifts of turns performed, not yet committed (0: settled)"
    )


_ID_PREFIX = os.urandom(8).hex()  # 64 random bits per process ...
_ID_COUNTER = itertools.count()  # ... and a counter: unique without a syscall per event


def new_event_id() -> str:
    """32 hex digits, unique: a random per-process prefix and a counter. (uuid4 per event
    cost 3 us, urandom 1 us; this runs for every event the node emits.) The fork-safe reset
    below keeps a forked worker from reusing the parent's ids."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _reseed_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(8).hex()
    _ID_COUNTER = itertools.count()


os.register_at_fork(after_in_child=_reseed_ids)


P = TypeVar("P", bound=Payload)


def payload_of(cls: type[P], fields: dict[str, Any]) -> P:
    """`cls(**fields)`, validated the same way, without BaseModel.__init__'s Python wrapper
    (0.3-0.5 us less; the runtime builds several payloads on every rotation)."""
    return cls.__pydantic_validator__.validate_python(fields)  # type: ignore[no-any-return]


_new_object = object.__new__
_set_slot = object.__setattr__


def with_cause(base: P, name: str, event_id: str) -> P:
    """`base` with the id of the event that caused it in field `name`, without validating the
    payload again (0.5 us, half of payload_of): for payloads a turn makes from its program's
    constants, validated once per distinct constant part (node/glyph/runtime.py), whose only
    per-turn field is the turn's id. That id passed the envelope's check (Event.id: at most 64
    characters), which is stricter than the payload's (ShortText: at most 256); a test keeps the
    two limits so."""
    fields = base.__dict__.copy()
    fields[name] = event_id
    made = _new_object(type(base))
    _set_slot(made, "__dict__", fields)
    _set_slot(made, "__pydantic_fields_set__", base.__pydantic_fields_set__)
    _set_slot(made, "__pydantic_extra__", None)
    _set_slot(made, "__pydantic_private__", None)
    return made


class Outgoing:
    """An event this node sends. Its wire bytes are built straight from the payload model (one
    serialisation in pydantic's Rust core, no intermediate dict), and the `Event` envelope only
    when something asks for it: its handlers (Router.sent), or a caller that keeps the event.
    A ritual sends four events in the hot path of every rotation; building and serialising each
    as an Event cost 6 us, this costs 2 us. A test checks that the bytes validate to exactly
    `event`."""

    __slots__ = (
        "_event",
        "actor",
        "id",
        "kind",
        "lamport",
        "node",
        "payload",
        "raw",
        "trace",
        "wall",
    )

    def __init__(
        self,
        event_id: str,
        node: str,
        kind: str,
        lamport: int,
        wall: float,
        actor: str,
        payload: Payload,
        raw: bytes,
        trace: str | None = None,
    ) -> None:
        self.id = event_id
        self.node = node
        self.kind = kind
        self.lamport = lamport
        self.wall = wall
        self.actor = actor
        self.payload = payload
        self.raw = raw
        self.trace = trace
        self._event: Event | None = None

    @property
    def event(self) -> Event:
        if self._event is None:
            # Every field is already valid: the payload model validated itself when it was
            # made, the node id when the identity was created, the kind in encode_event. So the
            # envelope is built the way pydantic's model_construct builds one, minus its generic
            # bookkeeping (2.7 us -> 0.5 us).
            event = Event.__new__(Event)
            object.__setattr__(
                event,
                "__dict__",
                {
                    "id": self.id,
                    "node": self.node,
                    "kind": self.kind,
                    "lamport": self.lamport,
                    "wall": self.wall,
                    "actor": self.actor,
                    "trace": self.trace,
                    "payload": self.payload.model_dump(mode="json"),
                },
            )
            object.__setattr__(event, "__pydantic_fields_set__", _EVENT_FIELDS)
            object.__setattr__(event, "__pydantic_extra__", None)
            object.__setattr__(event, "__pydantic_private__", None)
            self._event = event
        return self._event


# The envelope's field order is Event's: the router recognises its own echoes by the id at a
# fixed offset (`{"id":"` then 32 hex digits). One template for every event: the head (node,
# kind) is made once per kind, and `trace` is the one optional segment (empty when untraced), so
# the traced and untraced wire formats cannot drift apart.
_WIRE = b'{"id":"%s%s%d,"wall":%s,"actor":%s,%s"payload":%s}'
_TRACE_FIELD = b'"trace":"%s",'
# (node, kind) -> (the kind's payload model, b'","node":"<node>","kind":"<kind>","lamport":').
_HEADS: dict[tuple[str, str], tuple[type[Payload], bytes]] = {}
_ACTOR_JSON: dict[str, bytes] = {}  # actor -> its JSON string; bounded below


def _head(node: str, kind: str) -> tuple[type[Payload], bytes]:
    expected = PAYLOADS.get(kind)
    if expected is None:
        raise TypeError(f"{kind} takes a known kind payload")
    found = (expected, b'","node":"%s","kind":"%s","lamport":' % (node.encode(), kind.encode()))
    if len(_HEADS) < 4096:  # a node sends as itself: a handful of entries in practice
        _HEADS[node, kind] = found
    return found


# The wall clock in whole milliseconds, and its JSON, kept while the millisecond lasts: a
# ritual's four events share it, and repr() of a float (0.35 us) was a fifth of an encode.
# Milliseconds are what `wall` is for (advisory, never an order). The JSON is the float's
# shortest repr, as pydantic's serializer writes it, so the wire stays the envelope's own.
# (ms, wall, its JSON): one reference, replaced whole, so a thread encoding at the same moment
# never pairs one millisecond's wall with another's JSON.
_wall_now: tuple[int, float, bytes] = (-1, 0.0, b"0.0")


def _wall() -> tuple[float, bytes]:
    global _wall_now
    ms = time.time_ns() // 1_000_000
    now = _wall_now
    if ms != now[0]:
        # A clock set before 1970 (a Pi without a real-time clock can boot anywhere) sends the
        # epoch, never a negative time no reader would take (Event.wall: ge 0).
        wall = max(ms, 0) / 1000
        now = _wall_now = (ms, wall, b"%r" % wall)
    return now[1], now[2]


def _actor_json(actor: str) -> bytes:
    encoded = _ACTOR_JSON.get(actor)
    if encoded is None:
        # Checked once per actor, not per event: what the node sends, its router would take.
        if ACTOR_RE.match(actor) is None:
            raise ValueError(f"actor {actor[:80]!r} is not {ACTOR_RULE}")
        encoded = b'"%s"' % actor.encode()  # the rule's characters need no escaping
        if len(_ACTOR_JSON) < 4096:
            _ACTOR_JSON[actor] = encoded
    return encoded


def encode_event(
    node: str, kind: str, payload: Payload, lamport: int, actor: str = "node"
) -> Outgoing:
    """A new event of this node, ready for the wire (see Outgoing); sent while a traced turn
    is handled (core/trace.py: `current()`), it carries that turn's trace context."""
    expected, head = _HEADS.get((node, kind)) or _head(node, kind)
    if type(payload) is not expected and not isinstance(payload, expected):
        raise TypeError(f"{kind} takes a {expected.__name__} payload, not {type(payload).__name__}")
    if not 0 <= lamport < 2**63:
        raise ValueError(f"lamport {lamport} out of range")
    event_id = new_event_id()
    wall, wall_json = _wall()
    traced = _trace.current()  # one context variable read: the cost of tracing when it is off
    raw = _WIRE % (
        event_id.encode(),
        head,
        lamport,
        wall_json,
        _actor_json(actor),
        b"" if traced is None else _TRACE_FIELD % traced.encode(),
        payload.__pydantic_serializer__.to_json(payload),
    )
    return Outgoing(event_id, node, kind, lamport, wall, actor, payload, raw, traced)


_EVENT_FIELDS = frozenset(Event.model_fields)
_EVENT_VALIDATOR = Event.__pydantic_validator__


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


def _too_large(raw: bytes, max_payload: int) -> str:
    said = f"{len(raw)} bytes, the limit is {max_payload}"
    # A client's JSON encoder that escapes every non-ASCII character (Python's json.dumps by
    # default) writes a CJK character in 6 bytes, not UTF-8's 3: a prompt the schema allows can
    # then be over the limit that the same text in UTF-8 is under. Counted on the refusal only.
    escapes = raw.count(b"\\u")
    if escapes * 3 >= len(raw) - max_payload:
        said += f"; {escapes} characters were written as \\u escapes: send them as UTF-8"
    return said


def parse_event(
    topic: str, raw: bytes, max_payload: int, parsed: ParsedTopic | None = None
) -> tuple[Event, Payload]:
    """Validate one MQTT message as an event; raise Rejection saying what is wrong.
    `parsed` is the already split topic, when the caller has it."""
    if len(raw) > max_payload:
        raise Rejection("too_large", _too_large(raw, max_payload))
    parsed = parsed or parse_topic(topic)
    if parsed is None:
        raise Rejection("bad_topic", f"{topic!r} is not gibsey/v1/<node>/<domain>/<event>")
    if parsed.kind not in PAYLOADS:
        raise Rejection("unknown_kind", f"no event kind {parsed.kind!r} (topic {topic})")
    try:
        # One pass in pydantic's Rust core: parse and validate together (the validator itself:
        # model_validate_json's Python wrapper costs 0.2 us on every message of the spine).
        event: Event = _EVENT_VALIDATOR.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] in ("json_invalid", "json_type") or first["type"] == "model_type":
            raise Rejection("malformed_json", f"{first['msg']}") from None
        raise Rejection("bad_envelope", _first_error(exc)) from None
    if event.kind != parsed.kind or event.node != parsed.node_id:
        raise Rejection(
            "topic_mismatch",
            f"envelope says {event.node}/{event.kind} but topic is {parsed.node_id}/{parsed.kind}",
        )
    try:
        payload = payload_of(PAYLOADS[event.kind], event.payload)  # typed_payload, 0.3 us less
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
