"""The parts of a running node: what runs, when, in which order, and how they reach each other.

This is the daemon's declarative process list (as openpilot's process_config): each `Part` names
its attach function and the condition under which it runs, a function of the typed configuration
(gibsey.node.config.GibseyConfig), with the reason in words for the log. Parts
attach in the order listed; each puts what it gives the others in its typed slot of `Parts`
(`node.parts.ledger`, `node.parts.glyph`, ...), and a later part finds an earlier one there, never
by a registry or an attribute lookup. A slot is None when its part does not run on this node.

An attach function registers router handlers (`node.router.register(...)`) and services
(`node.add_service(...)`); it imports its part only when called, so a command that never starts
a node never loads the model runtime or the web framework.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from gibsey.node.config import GibseyConfig

if TYPE_CHECKING:
    from gibsey.core.envelope import Event, GlyphRotated
    from gibsey.ledger.ledger import Ledger
    from gibsey.mesh.node import MeshNode
    from gibsey.node.agents.service import AgentService
    from gibsey.node.daemon import Node
    from gibsey.node.dial.bridge import DialBridge
    from gibsey.node.gateway.part import Gateway
    from gibsey.node.glyph.rituals import RitualHandler
    from gibsey.node.glyph.runtime import Runtime
    from gibsey.node.story.engine import Story

log = logging.getLogger("gibsey.node")

MESH_LISTEN_RETRY_S = 10.0  # how often the mesh tries its port again while another holds it


@dataclass
class Parts:
    """What each running part gives the others; None where that part does not run."""

    ledger: Ledger | None = None  # this node's own feed and the view of every feed it holds
    mesh: MeshNode | None = None  # gossip of the feeds with the gallery's peers
    glyph: Runtime | None = None  # glyph rotation -> opcode table -> Zig VM -> effects
    story: Story | None = None  # the narrative engine over the ledger
    dial: DialBridge | None = None  # the glyph dial's frames -> glyph/rotated
    agents: AgentService | None = None  # personas, memory, the safety inverter
    gateway: Gateway | None = None  # HTTP API, dashboard, /metrics
    rituals: RitualHandler | None = None  # glyph/rotated -> gates -> the runtime -> ritual


def _always(config: GibseyConfig) -> bool:
    return True


class Part(NamedTuple):
    name: str
    attach: Callable[[Node], None]
    runs_when: Callable[[GibseyConfig], bool] = _always
    why: str = "always"


def attach_ledger(node: Node) -> None:
    from gibsey.ledger.ledger import Ledger
    from gibsey.ledger.ownfeed import after_a_death

    # The store reports its writes to the node's DiskHealth: a full disk is said once.
    ledger = Ledger.open(
        node.data_dir,
        node.identity.signing_key,
        disk=node.disk,
        commit_every_s=node.config.node.ledger_commit_every_s,
    )
    ledger.group.wait_s = node.config.node.ledger_group_wait_s
    behind = ledger.store.own_feed_behind(ledger.author)
    if behind:  # every mint and gift is refused until the feed is whole (ledger/ownfeed.py)
        log.error("ledger: %s", behind)
    else:
        ledger.store.mark_own(ledger.author)
    mesh = node.config.mesh
    if mesh is not None and mesh.enabled and node.run_record.previous_death() is not None:
        # The own feed's mark lags it by up to a minute (ledger/ownfeed.py): after a run that
        # died, a ledger restored from a backup of its last minute looks whole, and the next
        # entry would fork the feed at a seq the peers hold (an outside tester: a backup taken
        # 10 s before a kill -9 forked the feed at the start, with 6 visitors' mints).
        ledger.store.hold_own_feed(after_a_death())
    held = ledger.store.own_feed_held()
    if held and (mesh is None or not mesh.enabled):
        # A damaged or torn entry log held the feed for the peers' word: without a mesh, no
        # peer holds it (ledger/ownfeed.py).
        ledger.store.release_own_feed("this node has no mesh, so no peer holds its feed")
    elif held:  # its mesh signs on (MeshNode._confirm_own)
        log.error("ledger: %s", held)
    node.add_closer(ledger.close)
    node.parts.ledger = ledger
    node.add_service("ledger-check", lambda: _report_bad_rows(node, ledger))


async def _report_bad_rows(node: Node, ledger: Ledger) -> None:
    """Check every stored ledger row once at start (off the event loop), and raise a
    `safety/alert` for each bad one found then or later (a row another process wrote); the
    store quarantines it, and the node goes on with everything before it."""
    import asyncio
    import contextlib

    from gibsey.core.envelope import SafetyAlert
    from gibsey.ledger.store import BadRow

    loop = asyncio.get_running_loop()
    said: set[tuple[bytes, int]] = set()

    def say(bad: BadRow) -> None:
        if (bad.author, bad.seq) in said:
            return
        said.add((bad.author, bad.seq))
        detail = (
            f"quarantined {bad}: it and the later entries of its feed count for nothing and "
            "are not served; the entries before it still are (`gibsey ledger verify`)"
        )
        node.alert(SafetyAlert(reason="ledger_bad_row", detail=detail, severity="critical"))

    def found(bad: BadRow) -> None:  # in whichever thread checked
        with contextlib.suppress(RuntimeError):  # the loop has closed: the node has stopped
            loop.call_soon_threadsafe(say, bad)

    ledger.store.on_bad_row(found)
    for bad in await asyncio.to_thread(ledger.store.bad_rows):
        say(bad)
    # Acknowledged entries the start's reading of a damaged entry log set aside (ledger/store.py
    # unstored): said once a start, where a dashboard sees it, not only in a file's name.
    lost = await asyncio.to_thread(ledger.store.unstored, ledger.author)
    if lost:
        log.error("ledger: %s", lost)
        node.alert(SafetyAlert(reason="ledger_unstored", detail=lost, severity="critical"))


def attach_mesh(node: Node) -> None:
    from gibsey.core.envelope import MeshPeer
    from gibsey.mesh.node import MeshNode

    ledger = node.parts.ledger
    assert ledger is not None, "the mesh gossips the ledger: attach the ledger first"
    config = node.config.mesh
    assert config is not None, "the mesh runs only with a [mesh] section"

    def emit(kind: str, payload: dict[str, object]) -> None:
        node.emit(kind, MeshPeer.model_validate(payload))

    mesh = MeshNode(
        ledger.store, node.identity.signing_key, config, data_dir=node.data_dir, emit=emit
    )
    node.add_service("mesh", lambda: _run_mesh(node, mesh))
    node.parts.mesh = mesh


async def _run_mesh(node: Node, mesh: MeshNode) -> None:
    """The mesh, tried again every MESH_LISTEN_RETRY_S while its port is taken: said in one
    line and one `mesh_listen_failed` alert, not a traceback, and the node serves on (its
    ledger, its dial), as it does with its gateway's port taken."""
    import asyncio

    from gibsey.core.envelope import SafetyAlert
    from gibsey.mesh.errors import ListenError

    said = False
    while True:
        try:
            await mesh.run()
            return
        except ListenError as exc:
            if not said:
                log.error("mesh: %s; tried again every %g s", exc, MESH_LISTEN_RETRY_S)
                node.alert(SafetyAlert(reason="mesh_listen_failed", detail=str(exc)[:16_000]))
                said = True
        await asyncio.sleep(MESH_LISTEN_RETRY_S)


def attach_log(node: Node) -> None:
    """[log] format for the whole node's log, first of all (it was set by the gateway part, so a
    node with `--http off` wrote plain lines whatever the format said)."""
    from gibsey.node.gateway.journal import use_journal_logs, wants_journal
    from gibsey.node.gateway.logs import use_json_logs

    if node.config.log.format == "json":
        use_json_logs()
    elif wants_journal(node.config.log.format):
        use_journal_logs(node)


def attach_glyph(node: Node) -> None:
    from gibsey.node.glyph.part import attach

    node.parts.glyph = attach(node)


def attach_story(node: Node) -> None:
    from gibsey.node.story.part import attach

    node.parts.story = attach(node)


def attach_dial(node: Node) -> None:
    from gibsey.node.dial.part import attach

    node.parts.dial = attach(node)


def attach_agents(node: Node) -> None:
    from gibsey.node.agents.part import attach

    node.parts.agents = attach(node)


def attach_gateway(node: Node) -> None:
    # First, before anything imports FastAPI: its OpenAPI models built at the first use.
    from gibsey.node.gateway import fastapi_lean  # noqa: F401
    from gibsey.node.gateway.part import attach

    node.parts.gateway = attach(node)


def attach_rituals(node: Node) -> None:
    """The ritual pipeline, built once every part is there: glyph/rotated -> the gates (a
    source's bound, the safety inverter's per-actor throttle when the agents run, the node-wide
    bound: node/spine/inputs.py) -> the glyph runtime's program -> ritual/performed. The bounds
    by source and node-wide hold whichever parts run."""
    from gibsey.core.envelope import DIAL_ACTOR
    from gibsey.node.glyph.rituals import RitualGate, RitualHandler, no_program

    parts = node.parts
    inputs, router = node.inputs, node.router

    def by_source(event: Event, rotated: GlyphRotated) -> str | None:
        here = router.emitted_here(event.id)
        if here and event.actor == DIAL_ACTOR:
            return None  # the dial bridge admitted it at this bound already (_turn_admitted)
        return inputs.admit_source(rotated.source, here)

    def node_wide(event: Event, rotated: GlyphRotated) -> str | None:
        return inputs.admit()

    # A sender over its source's or actor's bound is refused before it spends the node's.
    gates: list[RitualGate] = [by_source]
    if parts.agents is not None:
        gates.append(parts.agents.rotation_gate)
    gates.append(node_wide)
    runner = parts.glyph.perform if parts.glyph is not None else no_program
    handler = RitualHandler(node.send, runner, gates)
    node.router.register_inline("rituals", ["glyph/rotated"], handler)
    parts.rituals = handler


PARTS: tuple[Part, ...] = (
    Part("log", attach_log),
    Part("ledger", attach_ledger),
    Part(
        "mesh",
        attach_mesh,
        runs_when=lambda c: c.mesh is not None and c.mesh.enabled,
        why="gibsey.toml has a [mesh] section, not enabled = false",
    ),
    Part("glyph", attach_glyph),
    Part("story", attach_story),
    Part(
        "dial",
        attach_dial,
        runs_when=lambda c: c.dial.enabled,
        why="[dial] enabled (the default)",
    ),
    Part("agents", attach_agents),
    Part(
        "gateway",
        attach_gateway,
        runs_when=lambda c: c.gateway.enabled,
        why="[gateway] listen is set and not off (gibsey up --http, GIBSEY_HTTP)",
    ),
    Part("rituals", attach_rituals),
)


def attach_parts(node: Node) -> None:
    for part in PARTS:
        if part.runs_when(node.config):
            part.attach(node)
        else:
            log.debug("part %s does not run: it runs when %s", part.name, part.why)
