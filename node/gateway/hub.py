"""The gateway's view of the spine: every event the router accepts, fanned out to live clients.

The hub registers one router handler for every event kind (all nodes, not only this one), keeps
the last glyph state of this node, a short ring of recent events for a page that just opened, and
hands each event to the subscribers (server-sent event streams, persona answers waiting on a
correlation id). Each subscriber has its own bounded queue: a slow browser loses its oldest
events (counted), never the node's memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gibsey.core.envelope import PAYLOADS, Event, GiftTxn, Payload
from gibsey.ledger.announce import txn_of
from gibsey.node.spine.drops import DropAlerts

if TYPE_CHECKING:
    from gibsey.ledger.entry import Entry
    from gibsey.ledger.ledger import Ledger
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.gateway.hub")

RECENT = 200
SUBSCRIBER_QUEUE = 512
HUB_QUEUE = 8192
TXN_TYPES = frozenset({"gift", "mint", "burn"})  # the entries a gift/txn announces
ANNOUNCED_KEPT = 1024  # entries announced by another process or node, kept against replays


@dataclass(eq=False)
class Subscriber:
    kinds: frozenset[str] | None
    predicate: Callable[[Event], bool] | None = None
    queue: asyncio.Queue[Event | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE)
    )
    dropped: int = 0
    ended: str = ""  # why its stream was ended, when the node ended it (not stopping)

    def wants(self, event: Event) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        return self.predicate is None or self.predicate(event)

    def offer(self, event: Event | None) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


@dataclass
class GlyphState:
    symbol: int | None = None
    rotation: int | None = None
    source: str = ""
    actor: str = ""
    event: str = ""
    lamport: int = 0
    ritual: dict[str, Any] | None = None
    turns: int = 0


class Hub:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.recent: collections.deque[Event] = collections.deque(maxlen=RECENT)
        self.glyph = GlyphState()
        self.subscribers: set[Subscriber] = set()
        # The live streams' subscribers by address, oldest first (end_stream).
        self.live: dict[str, collections.deque[Subscriber]] = {}
        self.agent_tokens: collections.Counter[str] = collections.Counter()
        self.agent_answers: collections.Counter[str] = collections.Counter()
        self.seen = 0
        self.unrecorded = 0  # gift/txn (naming any node) that no entry held backs: not shown
        self._unrecorded_said = DropAlerts(60.0, time.monotonic())
        # The entries whose gift/txn was shown (the node's own, another process's, a peer's),
        # the latest ANNOUNCED_KEPT.
        self._announced: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.closed = False
        self._last_token_t = 0.0
        self._token_window: collections.deque[float] = collections.deque(maxlen=4096)

    def attach(self) -> None:
        self.node.router.register(
            "gateway", list(PAYLOADS), self.on_event, local_only=False, queue_size=HUB_QUEUE
        )

    async def on_event(self, event: Event, payload: Payload) -> None:
        # Every gift/txn is judged, whichever node it names: anyone on the broker may publish
        # one under any node id (a made-up one too), and the dashboard would show it alike.
        if isinstance(payload, GiftTxn) and not await self._recorded(event, payload):
            self.unrecorded += 1
            # Said at once, then at most once a minute with the count: a flood of them is not
            # a flood of the journal.
            for due in self._unrecorded_said.due({"": self.unrecorded}, time.monotonic()):
                log.warning(
                    "not shown: %d gift/txn that no entry of the node's ledger backs (the "
                    "last: %s naming node %s, by %s, entry %s)",
                    due.dropped,
                    event.id,
                    event.node[:64],
                    event.actor[:64],
                    (payload.entry or "none")[:64],
                )
            return
        self.publish(event)

    async def _recorded(self, event: Event, payload: GiftTxn) -> bool:
        """Whether a gift/txn says what an entry this node holds says. Anyone on the broker may
        publish one naming any node, and a dashboard would show a gift nobody gave (the ledger
        itself is never moved by an announcement). Those the node sends are its own; the
        others (`gibsey ledger gift` in another process, after its entry is stored; a peer's
        node, whose entry the mesh imports) name an entry that is read back (off the loop: the
        store's lock is held through a group commit's fsync) and must announce to the same
        payload. Any author's entry will do: the store serves only entries their author's
        key vouches for, so the payload is what that author wrote. One naming an entry not
        held yet (a peer's, before the mesh fetched it) is not shown: a forgery looks the
        same."""
        hash_ = _entry_hash(payload)
        if self.node.router.emitted_here(event.id):
            # Its own are shown, and kept like the others: a replay of one under a new id
            # would otherwise be read back, found genuine, and shown a second time.
            if hash_ is not None:
                self._keep_announced(hash_)
            return True
        ledger = self.node.parts.ledger
        if ledger is None or hash_ is None:
            return False
        if hash_ in self._announced:
            return False  # a genuine announcement replayed under another id: shown once
        entry = await asyncio.to_thread(_stored, ledger, hash_)
        if entry is None or entry.type not in TXN_TYPES or txn_of(entry) != payload:
            return False
        self._keep_announced(hash_)
        return True

    def _keep_announced(self, hash_: bytes) -> None:
        self._announced[hash_] = None
        if len(self._announced) > ANNOUNCED_KEPT:
            self._announced.popitem(last=False)

    def publish(self, event: Event) -> None:
        self.seen += 1
        self.recent.append(event)
        if event.node == self.node.node_id:
            if event.kind == "glyph/rotated":
                p = event.payload
                g = self.glyph
                g.symbol, g.rotation = p.get("symbol"), p.get("rotation")
                g.source, g.actor, g.event = str(p.get("source", "")), event.actor, event.id
                g.lamport, g.ritual = event.lamport, None
                g.turns += 1
            elif (
                event.kind == "ritual/performed" and event.payload.get("cause") == self.glyph.event
            ):
                self.glyph.ritual = dict(event.payload)
            elif event.kind == "agent/emit":
                persona = str(event.payload.get("persona", ""))
                if event.payload.get("final"):
                    self.agent_answers[persona] += 1
                elif event.payload.get("text"):
                    self.agent_tokens[persona] += 1
                    self._token_window.append(time.monotonic())
        for sub in list(self.subscribers):
            if sub.wants(event):
                sub.offer(event)

    def tokens_per_s(self, window: float = 10.0) -> float:
        """Agent tokens streamed on this node over the last `window` seconds."""
        now = time.monotonic()
        recent = sum(1 for t in self._token_window if now - t <= window)
        return recent / window

    def subscribe(
        self,
        kinds: frozenset[str] | None = None,
        predicate: Callable[[Event], bool] | None = None,
    ) -> Subscriber:
        sub = Subscriber(kinds, predicate)
        if self.closed:
            sub.offer(None)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    @property
    def streams(self) -> collections.Counter[str]:
        """How many live streams each address holds."""
        return collections.Counter({address: len(subs) for address, subs in self.live.items()})

    def stream_opened(self, address: str, sub: Subscriber) -> None:
        """A live stream to `address` began (in `live` until it ends)."""
        self.live.setdefault(address, collections.deque()).append(sub)

    def stream_closed(self, address: str, sub: Subscriber) -> None:
        """A live stream ended; one already let go (end_stream) is not let go twice."""
        live = self.live.get(address)
        if live is None or sub not in live:
            return
        live.remove(sub)
        if not live:
            del self.live[address]

    def end_stream(self, address: str, why: str) -> None:
        """End the oldest live stream to `address`: let go now, said `why` as it closes."""
        sub = self.live[address][0]
        self.stream_closed(address, sub)
        sub.ended = why
        sub.offer(None)

    def close(self) -> None:
        """End every live stream (the node is stopping)."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.offer(None)

    def glyph_view(self) -> dict[str, Any]:
        from gibsey.core.symbols import ROTATIONS, SYMBOLS

        g = self.glyph
        out: dict[str, Any] = {
            "symbol": g.symbol,
            "rotation": g.rotation,
            "source": g.source,
            "actor": g.actor,
            "event": g.event,
            "lamport": g.lamport,
            "turns": g.turns,
            "ritual": g.ritual,
        }
        if g.symbol is not None and g.rotation is not None:
            sym = SYMBOLS[int(g.symbol)]
            out |= {
                "slug": sym.slug,
                "colour": sym.colour,
                "rotation_name": ROTATIONS[int(g.rotation)],
                "state": int(g.symbol) * 4 + int(g.rotation),
            }
        return out


def _entry_hash(payload: GiftTxn) -> bytes | None:
    """The entry hash a gift/txn names, or None when it names none (or not in hex)."""
    if payload.entry is None:
        return None
    try:
        return bytes.fromhex(payload.entry)
    except ValueError:
        return None


def _stored(ledger: Ledger, hash_: bytes) -> Entry | None:
    """The entry stored under `hash_`, counting commits another process made since the last
    look (`gibsey ledger gift` appends, then announces)."""
    ledger.store.refresh()
    return ledger.store.get_by_hash(hash_)
