"""What the gateway's reads answer: one model per answer (the OpenAPI document's 200 schemas).

The routes keep building their answers as they did (dicts, in the order a dashboard reads them);
each declares its model as `response_model`, so the document names every field. The models
forbid unknown keys: a key a route adds without adding it here is a 500 in the tests that read
every route (tests/test_gateway_api.py), never a key FastAPI drops silently. The routes answer
with `response_model_exclude_unset=True` (READ): a key a route leaves out (the glyph's slug
before the first turn, a label with no mesh key) stays out, and nothing is filled in. Field
order is the answer's key order: keep it as the routes build it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from gibsey.core.envelope import NodeStatus, RitualPerformed
from gibsey.ledger.governance import ProposalStatus

# The route arguments of a read: keys the route leaves out stay out of the answer.
READ: dict[str, Any] = {"response_model_exclude_unset": True}

HEX64 = r"^[0-9a-f]{64}$"


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A key some answers leave out: never null when there (the schema says its type, no default).
Absent = SkipJsonSchema[None]


def _no_default(schema: JsonDict) -> None:
    schema.pop("default", None)


def absent_unless(description: str) -> Any:
    """A field that is in the answer only where it applies (`description` says when)."""
    return Field(None, description=description, json_schema_extra=_no_default)


# -- /api/status, /api/glyph ----------------------------------------------------------------------
class GlyphView(Answer):
    """The dial's last turn on this node, and the ritual it caused."""

    symbol: int | None = Field(description="base symbol 0..63 of the last turn; null: none yet")
    rotation: int | None = Field(description="0 read, 1 write, 2 remember, 3 dream; null: none")
    source: str = Field(description="what turned the dial (`gateway`, a dial's name); '' none")
    actor: str = Field(description="who turned it; '' before the first turn")
    event: str = Field(description="id of the glyph/rotated event; '' before the first turn")
    lamport: int = Field(description="Lamport time of that event; 0 before the first turn")
    turns: int = Field(description="turns of this node's dial since the node started")
    ritual: RitualPerformed | None = Field(
        description="the ritual/performed the turn caused; null until it is performed"
    )
    # Only once the dial has turned:
    slug: str | Absent = absent_unless("the symbol's slug (e.g. london-fox); after a turn")
    colour: str | Absent = absent_unless("the symbol's colour, #RRGGBB; after a turn")
    rotation_name: Literal["read", "write", "remember", "dream"] | Absent = absent_unless(
        "the rotation's name; after a turn"
    )
    state: int | Absent = absent_unless("QDPI state, symbol * 4 + rotation; after a turn")


class PartsRunning(Answer):
    """Which parts run on this node (a part that does not run answers its reads 503)."""

    ledger: bool = Field(description="the signed ledger (/api/ledger/...)")
    runtime: bool = Field(description="the glyph runtime: turns are performed as rituals")
    mesh: bool = Field(description="gossip with the gallery's other nodes (/api/mesh/peers)")
    agents: bool = Field(description="the personas (/api/agent/ask)")
    story: bool = Field(description="the narrative engine (/api/story/pages)")
    graphql: bool = Field(description="/graphql answers (it runs with the story)")
    dial: bool = Field(description="the dial bridge (serial or MQTT frames from a Pico)")


class RouterCounts(Answer):
    """The node's event router since the node started."""

    accepted: int = Field(description="events accepted and dispatched")
    duplicates: int = Field(description="events seen twice (same id), dropped")
    rejected: dict[str, int] = Field(description="events refused, by reason")
    queue_depth: int = Field(description="events waiting in the parts' handler queues now")


class RitualCounts(Answer):
    """Visitors' turns: performed, refused over a flood bound, and the bounds."""

    performed: int = Field(description="turns performed as rituals since the node started")
    refused: int = Field(description="turns refused over a flood bound (no ritual, no reply)")
    inputs_per_second: float = Field(description="the node-wide bound on visitors' inputs")
    inputs_per_source_per_second: float = Field(description="the bound per source (a dial)")


class StatusAnswer(NodeStatus):
    """The node's status (as retained on MQTT), and what the gateway sees of it."""

    connected: bool = Field(description="the node's MQTT connection to its broker is up")
    parts: PartsRunning = Field(description="which parts run on this node")
    glyph: GlyphView = Field(description="the dial's last turn (as /api/glyph)")
    router: RouterCounts = Field(description="the event router's counters")
    rituals: RitualCounts = Field(description="visitors' turns and the flood bounds")
    writable: bool = Field(description="the gateway has a write token: writes can be made")
    kinds: list[str] = Field(description="every event kind the node knows, sorted")


# -- /api/symbols, /api/agent/personas ------------------------------------------------------------
class SymbolInfo(Answer):
    id: int = Field(description="base symbol 0..63")
    slug: str = Field(description="its name in URLs and events, e.g. london-fox")
    colour: str = Field(description="its colour, #RRGGBB")
    character: bool = Field(description="one of the 16 characters (a persona one can ask)")


class SymbolsAnswer(Answer):
    rotations: list[str] = Field(description="the 4 rotations' names, by number 0..3")
    symbols: list[SymbolInfo] = Field(description="the 64 base symbols, by id")


class PersonasAnswer(Answer):
    running: bool = Field(description="the agents part runs: /api/agent/ask can answer")
    personas: list[str] = Field(description="the slugs of the personas one can ask")


# -- /api/ledger/... ------------------------------------------------------------------------------
class BalancesAnswer(Answer):
    balances: dict[str, int] = Field(
        description="actor -> tokens held in this node's view, the richest first"
    )
    minted: int = Field(description="tokens minted, all actors")
    burned: int = Field(description="tokens burned (burns, and what gifts lost on the way)")
    supply: int = Field(description="minted - burned")


class EntryInfo(Answer):
    hash: str = Field(description="the entry's hash, 64 hex digits", pattern=HEX64)
    author: str = Field(description="its author's feed: a node's public key, 64 hex digits")
    ours: bool = Field(description="this node signed it")
    seq: int = Field(description="its place in its author's feed, from 1")
    lamport: int = Field(description="its Lamport time (the fold's order)")
    type: str = Field(
        description="mint, gift, burn, proposal, vote, outcome, members, or a story entry "
        "(ledger/bodies.py lists them)"
    )
    body: dict[str, Any] = Field(description="what the entry says; its fields depend on `type`")
    applied: bool | None = Field(
        description="it took effect in this node's view; null: an entry the fold does not judge"
    )
    note: str = Field(description="why it took no effect (or what changed it); '' otherwise")


class EntriesAnswer(Answer):
    total: int = Field(description="entries that match the filters (all of them, not `limit`)")
    entries: list[EntryInfo] = Field(description="the last `limit` of them, in fold order")


class ProposalInfo(Answer):
    proposal: str = Field(description="the hearing's hash (its proposal entry's)", pattern=HEX64)
    action: str = Field(description="narrative-merge, opcode-table-change or config-change")
    target: str = Field(description="sha256 of the change proposed, 64 hex digits")
    title: str = Field(description="what the change is, in words")
    proposer: str = Field(description="the actor who proposed it")
    status: ProposalStatus = Field(description="open, passed, rejected, expired or void")
    yes: int = Field(description="voting weight said yes so far")
    no: int = Field(description="voting weight said no so far")
    total: int = Field(description="all the voting weight at the snapshot")
    lamport: int = Field(description="Lamport time the hearing opened")
    deadline: int = Field(description="Lamport time past which an open hearing expires")
    votes: dict[str, Literal["yes", "no"]] = Field(description="actor -> its vote")


# -- /api/mesh/peers ------------------------------------------------------------------------------
class PeerInfo(Answer):
    key: str = Field(description="the peer's public key, 64 hex digits")
    endpoint: str = Field(description="where it is dialled, tcp://HOST:PORT ('' if it dials us)")
    state: str = Field(description="new, up, down or banned")
    last_seen_wall: float | None = Field(description="when it was last heard (Unix seconds)")
    last_seen_ago: float | None = Field(description="seconds since then; null: never heard")
    heard: bool = Field(description="it has said what it holds (they_lack/we_lack are known)")
    they_lack: int | None = Field(description="entries we hold that it lacks; null: not heard")
    we_lack: int | None = Field(description="entries it holds that we lack; null: not heard")
    strikes: int = Field(description="protocol faults counted against it (a ban at the limit)")
    banned: bool = Field(description="it is banned now")
    entries_in: int = Field(description="entries imported from it")
    entries_out: int = Field(description="entries sent to it")
    bytes_in: int = Field(description="bytes received from it")
    bytes_out: int = Field(description="bytes sent to it")
    rejected: int = Field(description="entries from it refused (bad signature, forged, ...)")
    last_reject: str = Field(description="why the last one was refused; '' none")


class MeshCounters(Answer):
    """The mesh's counters since it started (each also in /metrics as gibsey_mesh_*)."""

    bytes_out: int = Field(description="bytes sent")
    bytes_in: int = Field(description="bytes received")
    msgs_out: int = Field(description="messages sent")
    frames_out: int = Field(description="frames sent")
    msgs_in: int = Field(description="messages received")
    entries_in: int = Field(description="entries appended from peers")
    duplicates: int = Field(description="entries received that were held already")
    rejected: int = Field(description="entries refused")
    forks: int = Field(description="forks proved (two entries at one seq of a feed)")
    strikes: int = Field(description="protocol faults counted against peers")
    limited: int = Field(description="inbound messages dropped by a rate limit or a ban")
    dropped_out: int = Field(description="outbound messages dropped (queue full, not connected)")
    refused: int = Field(description="handshakes refused: key not allowed, or banned")
    unknown_key: int = Field(description="handshakes from a key not on the allow-list")
    banned_key: int = Field(description="handshakes from a banned key")
    no_handshake: int = Field(description="connections that sent something else first")
    bad_handshake: int = Field(description="handshakes that did not parse or verify")
    cut_handshake: int = Field(description="connections closed before the handshake ended")
    over_max_peers: int = Field(description="peers refused over the bound on peers")
    dial_failed: int = Field(description="dials of a peer that failed")
    one_key_two_nodes: int = Field(description="one key seen from two places at once")
    flooded: int = Field(
        description="times the port was closed for a while: more connections at once than it holds"
    )
    crowded: int = Field(
        description="connections closed at once: their address held more than peers need"
    )
    rounds: int = Field(description="sync rounds run")
    disk_refused: int = Field(description="imports the disk refused (sent again later)")
    inbox_peak: int = Field(description="most entries of one peer held at once awaiting storage")
    inbox_peak_bytes: int = Field(description="their most bytes held at once")
    gave_back: int = Field(
        description="times the allocator's free memory was returned to the system after a catch-up"
    )


class MeshAnswer(Answer):
    key: str = Field(description="this node's mesh public key, 64 hex digits")
    endpoint: str = Field(description="the endpoint this node advertises to its peers")
    updated_wall: float = Field(description="when this status was made (Unix seconds)")
    feeds: int = Field(description="feeds (authors) held")
    entries: int = Field(description="entries held, all feeds")
    forks: int = Field(description="entries quarantined as parts of a proved fork")
    peers: list[PeerInfo] = Field(description="the peers configured and met")
    stats: MeshCounters = Field(description="the mesh's counters")


# -- /api/monitor/targets -------------------------------------------------------------------------
class TargetLabels(Answer):
    gallery: str = Field(description="the gallery's name (`?gallery=`)")
    role: Literal["self", "peer"] = Field(description="this node, or one of its mesh peers")
    mesh_key: str | Absent = absent_unless(
        "the first 16 hex digits of its mesh key; absent where it is not known"
    )


class TargetGroup(Answer):
    """One Prometheus http_sd target group: one node's gateway."""

    targets: list[str] = Field(description="HOST:PORT of the node's gateway (one)")
    labels: TargetLabels = Field(description="the labels Prometheus gives its samples")


# -- /api/story/pages -----------------------------------------------------------------------------
class PageInfo(Answer):
    """A page as GraphQL's Page type has it."""

    id: str = Field(description="the page's id in the corpus, e.g. 001")
    version: str = Field(description="hash of this version of the page, 64 hex digits")
    symbol: str = Field(description="the slug of the symbol the page belongs to")
    title: str = Field(description="the page's title")
    index: int = Field(description="its place in the corpus, from 1")
    section: int | None = Field(description="its section, if the corpus gives one")
    chapter: str | None = Field(description="its chapter, if the corpus gives one")
    text: str = Field(description="the page's text (Markdown)")


class PagesAnswer(Answer):
    branch: str = Field(description="the branch read (`main` unless asked)")
    pages: list[PageInfo] = Field(description="its pages in corpus order, up to `limit`")
    more: bool = Field(description="the branch has pages beyond these (a larger `limit`)")
