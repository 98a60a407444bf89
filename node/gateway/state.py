"""What the gateway's endpoints reach: the node, its parts, the hub, the write token, publishing.

An endpoint takes `gw: State` (a FastAPI dependency) and finds a part through it: `gw.ledger()`,
`gw.mesh()`, `gw.story()` answer 503 when that part does not run on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from gibsey.core.envelope import Event, Payload, SafetyAlert
from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.idempotency import Replays
from gibsey.node.gateway.models import LedgerWrite

if TYPE_CHECKING:
    from gibsey.ledger.entry import Entry
    from gibsey.ledger.ledger import Ledger
    from gibsey.mesh.node import MeshNode
    from gibsey.node.daemon import Node
    from gibsey.node.gateway.hub import Hub
    from gibsey.node.gateway.scrape import Metrics
    from gibsey.node.story.engine import Story

log = logging.getLogger("gibsey.gateway")

ACK_TIMEOUT_S = 5.0
REFUSAL_ALERT_INTERVAL_S = 60.0
# Requests waiting to hear whether a part refused what they published (refusal_of): past this,
# the oldest listeners go first (an HTTP asker gone before its answer began never cleans up).
LISTENERS_KEPT = 1024

RefusalListener = Callable[[Event, str], None]


def refusal_of(listeners: list[RefusalListener] | None, box: dict[str, str]) -> asyncio.Future[str]:
    """Why the part that keeps `listeners` (the rituals' gates, the personas' throttles)
    refused the event whose id `publish_with_id` put in `box`, once it does: a request waiting
    on HTTP is answered at once, not after its timeout. The listener goes when the future is
    done or cancelled (cancel it when the request ends); None: no such part, never refused."""
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    if listeners is None:
        return refused

    def on_refused(event: Event, why: str) -> None:
        if event.id == box.get("id") and not refused.done():
            refused.set_result(why)

    def gone(_: asyncio.Future[str]) -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(on_refused)

    listeners.append(on_refused)
    del listeners[:-LISTENERS_KEPT]
    refused.add_done_callback(gone)
    return refused


@dataclass(eq=False)
class GatewayState:
    node: Node
    hub: Hub
    metrics: Metrics
    token: str | None  # the write token; None: the gateway is read-only
    # reason -> (when its last alert went out, refusals since then)
    refusals: dict[str, tuple[float, int]] = field(default_factory=dict)
    # Set as the gateway stops: a write waiting for the broker's acknowledgement answers at
    # once (acked false), within uvicorn's graceful shutdown, not cancelled into a 500.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Gifts by Idempotency-Key: a retry is answered as the first, never given twice.
    gifts: Replays[LedgerWrite] = field(default_factory=Replays)

    # -- the parts ------------------------------------------------------------------------------
    def ledger(self) -> Ledger:
        ledger = self.node.parts.ledger
        if ledger is None:
            raise ApiError(503, "the ledger part is not running on this node")
        return ledger

    def mesh(self) -> MeshNode:
        mesh = self.node.parts.mesh
        if mesh is None:
            raise ApiError(
                503, "the mesh part is not running on this node (no [mesh] in gibsey.toml)"
            )
        return mesh

    def story(self) -> Story:
        story = self.node.parts.story
        if story is None:
            raise ApiError(503, "the narrative engine (story) part is not running on this node")
        return story

    def agents_running(self) -> bool:
        return self.node.parts.agents is not None

    def parts(self) -> dict[str, bool]:
        """Which parts run on this node (what /api/status reports)."""
        parts = self.node.parts
        return {
            "ledger": parts.ledger is not None,
            "runtime": parts.glyph is not None,
            "mesh": parts.mesh is not None,
            "agents": parts.agents is not None,
            "story": parts.story is not None,
            "graphql": parts.story is not None,  # /graphql answers while the story runs
            "dial": parts.dial is not None,
        }

    def refused(self, reason: str, detail: str) -> None:
        """Say that a request was refused (`http_unauthorized`, `http_too_large`): a safety/alert
        at most once a minute per reason, counting the refusals since the last one, so that a
        stranger's flood of refusals neither fills the log nor spends the node's alert budget."""
        now = time.monotonic()
        last, count = self.refusals.get(reason, (-math.inf, 0))
        if now - last < REFUSAL_ALERT_INTERVAL_S:
            self.refusals[reason] = (last, count + 1)
            return
        self.refusals[reason] = (now, 0)
        log.info("gateway refused: %s (%d more since the last alert)", detail, count)
        self.node.alert(
            SafetyAlert(reason=reason, detail=f"{detail} ({count} more since the last alert)")
        )

    # -- publishing -----------------------------------------------------------------------------
    async def publish(self, kind: str, payload: Payload, actor: str) -> tuple[Event, bool]:
        """Put one event on the spine and wait (briefly) for the broker's acknowledgement."""
        return await self.publish_with_id(kind, payload, actor, {})

    async def publish_with_id(
        self,
        kind: str,
        payload: Payload,
        actor: str,
        box: dict[str, str],
        correlation: str | None = None,
    ) -> tuple[Event, bool]:
        """Publish, recording the event's id in `box` before the broker can echo it back (so a
        subscriber's predicate sees it); `correlation` goes into the payload's field of that
        name, and into box["correlation"]."""
        if self.node.spine is None:
            raise ApiError(503, "the node's event spine is not running")
        if correlation is not None:
            payload = payload.model_copy(update={"correlation": correlation})
            box["correlation"] = correlation
        out, acked = self.node.send(kind, payload, actor)
        event = out.event
        box["id"] = event.id
        # At debug: one line per HTTP write was 83,000 INFO lines a day in the journal of a Pi
        # whose kiosk turns once a second (an outside tester's soak); every event is on MQTT
        # and counted in /metrics already.
        log.debug(
            "published %s %s for %s",
            kind,
            event.id,
            actor,
            extra={"event_id": event.id, "kind": kind, "actor": actor},
        )
        return event, await self._acknowledged(acked)

    async def _acknowledged(self, acked: asyncio.Future[None]) -> bool:
        """Whether the broker acknowledged within ACK_TIMEOUT_S. Once the gateway stops, the
        answer goes out at once: the node stopping cuts its spine too, so no acknowledgement
        would come, and uvicorn cancelled the wait (3 s) before it ran out (5 s): a 500 and a
        traceback for a gift stored, which invites the client to give it a second time."""
        if not acked.done() and not self.stopping.is_set():
            stop = asyncio.ensure_future(self.stopping.wait())
            try:
                await asyncio.wait(
                    (acked, stop), timeout=ACK_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop.cancel()
        return acked.done() and not acked.cancelled() and acked.exception() is None

    async def announce_entry(
        self, entry: Entry, kind: str, payload: Payload, actor: str
    ) -> LedgerWrite:
        """Publish the event for a ledger entry just appended, and say what the entry did."""
        eff = self.ledger().view().effect(entry)
        event, acked = await self.publish(kind, payload, actor)
        return LedgerWrite(
            event=event.id,
            kind=kind,
            acked=acked,
            entry=entry.hash_hex,
            seq=entry.seq,
            lamport=entry.lamport,
            applied=bool(eff and eff.applied),
            note=eff.note if eff else "",
        )


def gateway_state(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state


State = Annotated[GatewayState, Depends(gateway_state)]
