"""The watchdog's part in a starting node: a death of the previous run becomes a ritual.

`Node.start` calls `record_rebirth` when the run record shows the last run did not end cleanly:
the death goes on the ledger (a `rebirth` entry, so the room knows), a crash loop opens a hearing
on whether this node's agents should run degraded, and a `ritual/rebirth` event tells dashboards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from gibsey.core.envelope import RitualRebirth
from gibsey.ledger.errors import LedgerError
from gibsey.node.watchdog.rebirth import Death, DeathLedger

if TYPE_CHECKING:
    from gibsey.ledger.ledger import Ledger
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.watchdog")

SIGNED_ON_POLL_S = 0.5  # how often a death waiting for its feed to be signed on looks again


def record_rebirth(node: Node, death: Death) -> None:
    window_min = node.config.watchdog.window_minutes
    deaths = DeathLedger(node.data_dir)
    deaths.add(death)
    restarts = deaths.recent(node.run_record.boot, death.died_at_boottime, window_min * 60)
    log.warning(
        "the previous run (pid %d) died after %.1fs or more (its last heartbeat): %s; "
        "%d death(s) in %g min",
        death.pid,
        death.uptime_s,
        death.cause,
        restarts,
        window_min,
    )
    ledger = node.parts.ledger
    if ledger is not None and ledger.store.own_feed_held():
        # Its mesh signs the feed on once the peers have shown how far they hold it (an entry
        # signed before could fork it: node/parts.py attach_ledger): the death goes on then.
        node.add_service("rebirth-record", lambda: _once_signed_on(node, death, restarts))
        return
    _record(node, deaths, death, restarts)


async def _once_signed_on(node: Node, death: Death, restarts: int) -> None:
    ledger = node.parts.ledger
    assert ledger is not None
    while ledger.store.own_feed_held():  # noqa: ASYNC110 (released on disk: the mesh, a technician)
        await asyncio.sleep(SIGNED_ON_POLL_S)
    _record(node, DeathLedger(node.data_dir), death, restarts)


def _record(node: Node, deaths: DeathLedger, death: Death, restarts: int) -> None:
    """The death on the ledger (and a hearing if the node keeps dying), and `ritual/rebirth`."""
    limit = node.config.watchdog.restarts
    window_s = node.config.watchdog.window_minutes * 60
    now = death.died_at_boottime
    entry_hash = hearing = None
    ledger = node.parts.ledger
    if ledger is not None:
        try:
            entry_hash = ledger.append(
                "rebirth", _rebirth_body(node.node_id, death, restarts)
            ).hash_hex
            if restarts > limit and not deaths.hearing_open_in_window(
                node.run_record.boot, now, window_s
            ):
                hearing = _open_hearing(
                    ledger, node.node_id, restarts, node.config.watchdog.window_minutes
                )
                deaths.note_hearing(node.run_record.boot, now, hearing)
        except LedgerError as exc:
            # The store refuses to sign (its own feed is behind its mark, said as the ledger
            # opened): the node must run all the same, or the mesh could never bring the feed
            # back and every start would die here (a crash loop after a kill -9).
            log.warning("the death is not recorded on the ledger: %s", _first_clause(exc))
    node.emit(
        "ritual/rebirth",
        RitualRebirth(
            uptime_s=death.uptime_s,
            cause=death.cause[:256],
            restarts=restarts,
            window_minutes=node.config.watchdog.window_minutes,
            previous_pid=death.pid,
            entry=entry_hash,
            hearing=hearing,
        ),
    )


def _first_clause(exc: Exception) -> str:
    """The refusal's reason without its advice (the ledger said it whole as it opened)."""
    return str(exc).split(": ", 1)[0]


def _rebirth_body(node_id: str, death: Death, restarts: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "node": node_id,
        "uptime_ms": int(death.uptime_s * 1000),
        "cause": death.cause[:96],
        "restarts": restarts,
        "pid": death.pid,
    }
    if death.exit_code:
        body["exit_code"] = death.exit_code
        body["exit_status"] = death.exit_status
    return body


def _open_hearing(ledger: Ledger, node_id: str, restarts: int, window_min: float) -> str:
    """A crash loop: the room decides whether this node goes on as it is. The proposal's target
    names the change it would apply: degraded agents."""
    change = f"config-change:{node_id}:[agent] degraded = true"
    target = hashlib.sha256(change.encode()).hexdigest()
    title = (
        f"Schrödinger Hearing: {node_id} died {restarts} times "
        f"in {window_min:g} min; degrade its agents?"
    )
    return ledger.propose("config-change", target, title, node_id).hash_hex
