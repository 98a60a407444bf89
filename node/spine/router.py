"""The router: validates every message on the spine and hands each event to the parts.

This is what the cloud plan's Faust worker did. Parts register handlers for event kinds; each
handler gets its own bounded queue and its own worker task, so a slow handler only ever delays
itself: when its queue is full the oldest waiting event is dropped for that handler and counted
(memory stays bounded, the other handlers are untouched; the node reports the count). Events
are de-duplicated by id before dispatch, because QoS 1 is at-least-once and a resend after
reconnecting must not run a ritual twice (the ids of this process's run: node/spine/spine.py
starts each run with a clean session, so nothing of a previous run is redelivered).

Bad input is rejected here, at the boundary, with a reason: counted, logged, and reported as a
`safety/alert` (rate-limited, so a flood of garbage cannot turn into a flood of alerts).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gibsey.core import trace
from gibsey.core.envelope import (
    Event,
    NarrativeChange,
    Outgoing,
    Payload,
    Rejection,
    SafetyAlert,
    parse_event,
)
from gibsey.core.paced import PacedLog
from gibsey.core.topics import STATUS_KIND, ParsedTopic, parse_topic, topic_for

log = logging.getLogger("gibsey.router")
REFUSALS_LOG_S = 60.0  # refusals: the first of a reason said at once, then a line this often

# Kinds only the node's daemon emits about itself: one naming this node that it did not send is
# forged (gift/txn, gift/balance and narrative/change are also announced by the node's own CLI
# commands, and trigger nothing here but a relay to dashboards and a re-read of the ledger).
NODE_OWNED_KINDS = frozenset(
    {
        "ritual/performed",
        "ritual/effect",
        "ritual/rebirth",
        "safety/alert",
        "vm/loaded",
        "agent/emit",
        "agent/reloaded",
        "hearing/opened",
        "hearing/vote",
        "mesh/peer",
    }
)


def _node_owned(event: Event, payload: Payload) -> bool:
    """Of a kind only the node's daemon emits (above), or a glyph's PROPOSE: a narrative/change
    proposing a branch with no version, which the story part makes a branch of, signed on the
    ledger (node/story/part.py). The CLI's and GraphQL's announcements of a merge proposal carry
    the merge commit as their version. An outside tester on an open broker published 380 of
    them naming the node: 380 branches signed by the node and gossiped to every peer."""
    if event.kind in NODE_OWNED_KINDS:
        return True
    return (
        event.kind == "narrative/change"
        and isinstance(payload, NarrativeChange)
        and payload.change == "propose"
        and payload.version is None
    )


# Visitors' turns that start a trace of their own when they arrive without one and tracing is on
# (a client that knows no trace context, the gateway's rotate): one trace per turn all the same.
TURN_KINDS = frozenset({"glyph/rotated", "agent/request"})

Handler = Callable[[Event, Payload], Awaitable[None]]
InlineHandler = Callable[[Event, Payload], None]
DropHandler = Callable[[Event], None]
AdmitHandler = Callable[[Event, Payload], bool]
AlertSink = Callable[[SafetyAlert], None]


@dataclass
class Registration:
    name: str
    kinds: frozenset[str]
    handler: Handler
    queue: asyncio.Queue[tuple[Event, Payload]]
    local_only: bool
    handled: int = 0
    dropped: int = 0
    failed: int = 0
    task: asyncio.Task[None] | None = None
    # Told of each event dropped from the full queue (the oldest waiting): a part whose askers
    # wait for an answer tells them at once (node/agents/service.py), not after their timeout.
    on_drop: DropHandler | None = None
    # Asked at arrival, before the queue: False and the event is not queued (the part refused
    # it itself, and said so). A bound checked only once an event left the queue let a flood
    # of questions fill it, a real one waiting behind them (node/agents/service.py).
    admit: AdmitHandler | None = None


@dataclass
class RouterStats:
    accepted: int = 0
    duplicates: int = 0
    dropped: int = 0  # events dropped by full handler queues (each handler's own: reg.dropped)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    alerts_suppressed: int = 0
    echoes: int = 0  # the node's own events sent back by a broker without no local, unread
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class SeenIds:
    """A bounded set of recently seen event ids (oldest forgotten first).

    Kept as the ids' hashes, not the strings: a key is ~80 characters (node, kind, id), ~130 B
    as a str, and a full window of 65,536 was ~12 MB of a Pi Zero's 512 MB (two windows: ~20 MB
    of a flooded node's RSS); an int is 36 B. The hash is SipHash with a per-process random key
    (str hashes are randomised), 64 bits: two ids of one window share one with a chance of
    ~65,536^2 / 2^65, about 1 in 10^10, and a stranger cannot pick ids that collide with a
    visitor's (they would only have the visitor's turn dropped as a duplicate)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: collections.deque[int] = collections.deque()
        self._set: set[int] = set()

    def __contains__(self, event_id: str) -> bool:
        return hash(event_id) in self._set

    def add(self, event_id: str) -> bool:
        """Remember the id; False if it was already there."""
        key = hash(event_id)
        if key in self._set:
            return False
        self._set.add(key)
        self._order.append(key)
        if len(self._order) > self._capacity:
            self._set.discard(self._order.popleft())
        return True


class Router:
    def __init__(
        self,
        node_id: str,
        alert_sink: AlertSink,
        max_payload: int = 64 * 1024,
        queue_size: int = 1024,
        dedup_window: int = 65_536,
        alerts_per_second: float = 5.0,
        # Called with each valid event from others before it is accepted; may refuse it by
        # raising Rejection. The node passes its Lamport clock's observe (node/daemon.py).
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self._alert_sink = alert_sink
        self._max_payload = max_payload
        self._queue_size = queue_size
        self._seen = SeenIds(dedup_window)
        self._registrations: list[Registration] = []
        self._by_kind: dict[str, list[Registration]] = collections.defaultdict(list)
        self._inline: dict[str, list[tuple[str, InlineHandler, bool]]] = collections.defaultdict(
            list
        )
        self._alert_budget = alerts_per_second
        self._alert_rate = alerts_per_second
        self._alert_refill = time.monotonic()
        self._on_event = on_event
        # Ordered, so the oldest is dropped in O(1) (a plain dict's next(iter()) rescans the slots
        # its deletions left behind).
        self._emitted: collections.OrderedDict[str, Outgoing] = collections.OrderedDict()
        self._emitted_cap = 4096
        # The ids of what this node emitted (beyond _emitted's bytes): its echo is its own.
        self._sent = SeenIds(dedup_window)
        self.stats = RouterStats()
        # What the router refuses, said in the log paced per reason (the alerts have their own
        # budget): anyone on the broker could otherwise write a log line per message.
        self.refusals = PacedLog(log, "", REFUSALS_LOG_S)
        self._running = False

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str,
        kinds: list[str] | tuple[str, ...],
        handler: Handler,
        *,
        local_only: bool = True,
        queue_size: int | None = None,
        on_drop: DropHandler | None = None,
        admit: AdmitHandler | None = None,
    ) -> Registration:
        """Have `handler` called for every valid event of these kinds (local node only, unless
        local_only=False). `admit`, if given, is asked first, at arrival: an event it refuses
        is not queued. A full queue drops its oldest event for the newest, then calls `on_drop`
        with the one dropped."""
        reg = Registration(
            name=name,
            kinds=frozenset(kinds),
            handler=handler,
            queue=asyncio.Queue(maxsize=queue_size or self._queue_size),
            local_only=local_only,
            on_drop=on_drop,
            admit=admit,
        )
        self._registrations.append(reg)
        for kind in reg.kinds:
            self._by_kind[kind].append(reg)
        if self._running:
            reg.task = asyncio.create_task(self._worker(reg), name=f"handler:{name}")
        return reg

    def register_inline(
        self,
        name: str,
        kinds: list[str] | tuple[str, ...],
        handler: InlineHandler,
        *,
        local_only: bool = True,
    ) -> None:
        """Call a synchronous handler right in the dispatch, with no queue and no task hop.

        Only for work that cannot block and takes microseconds (running a verified VM program,
        emitting its effects): the ritual path, where every loop iteration is latency a visitor
        feels. Anything that waits (a model, a disk, the network) registers with `register`.
        """
        for kind in kinds:
            self._inline[kind].append((name, handler, local_only))

    @property
    def registrations(self) -> list[Registration]:
        return list(self._registrations)

    def queue_depth(self) -> int:
        return sum(r.queue.qsize() for r in self._registrations)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        for reg in self._registrations:
            if reg.task is None:
                reg.task = asyncio.create_task(self._worker(reg), name=f"handler:{reg.name}")

    async def stop(self) -> None:
        self._running = False
        tasks = [r.task for r in self._registrations if r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for reg in self._registrations:
            reg.task = None

    async def drain(self) -> None:
        """Wait until every handler has finished what is queued (for clean stops and tests)."""
        for reg in self._registrations:
            await reg.queue.join()

    async def _worker(self, reg: Registration) -> None:
        while True:
            event, payload = await reg.queue.get()
            try:
                if event.trace is None:
                    await reg.handler(event, payload)
                else:  # the handler's sends and log records belong to the event's turn
                    with trace.within(event.trace):
                        await reg.handler(event, payload)
                reg.handled += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A failing handler is that part's bug: report it, keep serving.
                reg.failed += 1
                log.exception("handler %s failed on %s %s", reg.name, event.kind, event.id)
                self._alert(
                    SafetyAlert(
                        reason="handler_failed",
                        detail=f"{reg.name} on {event.kind} {event.id}: {exc!r}"[:16_000],
                        severity="critical",
                    )
                )
            finally:
                reg.queue.task_done()

    # -- the boundary ---------------------------------------------------------------------------
    def report(self, alert: SafetyAlert, paced: bool = False) -> None:
        """Publish a safety/alert for a part, under the same rate limit as rejections; or, when
        its part paces it itself (`paced`: one a kind a minute at most, with a count), at once:
        a flood of junk spent the shared budget, and a paced line with thousands counted in it
        was lost (an outside tester's mint_throttled never reached a dashboard)."""
        if paced:
            self._alert_sink(alert)
            return
        self._alert(alert)

    def _alert(self, alert: SafetyAlert) -> None:
        now = time.monotonic()
        self._alert_budget = min(
            self._alert_rate, self._alert_budget + (now - self._alert_refill) * self._alert_rate
        )
        self._alert_refill = now
        if self._alert_budget < 1.0:
            self.stats.alerts_suppressed += 1
            return
        self._alert_budget -= 1.0
        self._alert_sink(alert)

    def handle_message(self, topic: str, raw: bytes) -> Event | None:
        """Validate one MQTT message and dispatch it. Never raises for bad input."""
        parsed = parse_topic(topic)
        if parsed is not None and parsed.kind == STATUS_KIND:
            return None  # retained status documents are not events
        if self._own_echo(parsed, raw):
            self.stats.echoes += 1
            return None  # handled when it was sent (`sent`): the echo only confirms it
        try:
            event, payload = parse_event(topic, raw, self._max_payload, parsed)
            if self._on_event is not None:
                # The node's clock, before the id is remembered: it may refuse the event
                # (lamport_ahead), which then counts and alerts like any bad input.
                self._on_event(event)
        except Rejection as rej:
            self.stats.rejected[rej.reason] += 1
            self.refusals.note(f"rejected messages ({rej.reason})", f"on {topic}: {rej}")
            if parsed is None or parsed.kind != "safety/alert":  # never alert about alerts
                self._alert(
                    SafetyAlert(reason=rej.reason, detail=rej.detail[:16_000], topic=topic[:256])
                )
            return None
        # A duplicate is the same event come again (a QoS 1 redelivery, a second path through a
        # bridge): the same node, kind and id. By id alone, anyone could squat a client's next
        # ids in advance under another kind or node, and its turns were dropped unseen.
        if not self._seen.add(_dedup_key(event.node, event.kind, event.id)):
            self.stats.duplicates += 1
            return None
        if event.node == self.node_id and self._forged_own(event, payload):
            return None
        self._accept(event, payload)
        return event

    def _forged_own(self, event: Event, payload: Payload) -> bool:
        """An event naming this node, of a kind only its daemon emits (_node_owned), that it
        did not emit: any client of the broker can publish one. Counted (`forged_own`), alerted,
        never dispatched to handlers that trust the node's own events. Visitors' inputs naming
        the node (turns, questions, signed operator changes) are not of these kinds."""
        if not _node_owned(event, payload):
            return False
        if event.id in self._sent:
            return False  # ours, its echo no longer in memory (more than _emitted_cap in flight)
        self.stats.rejected["forged_own"] += 1
        self.refusals.note(
            "refused events naming this node, which did not send them (forged_own)",
            f"{event.kind} {event.id}",
        )
        self._alert(
            SafetyAlert(
                reason="forged_own",
                detail=f"{event.kind} {event.id} by {event.actor[:64]} names this node, "
                "which did not send it; ignored",
                # Where it was published: a dashboard that showed it can take it back by its id.
                topic=topic_for(event.node, event.kind),
            )
        )
        return True

    def sent(self, out: Outgoing, echoed: bool) -> None:
        """Handle an event this node is sending now: its handlers never wait for a broker round
        trip, nor for a broker at all. Its id is remembered as this node's, and a forged event
        reusing it later is a duplicate; one sent earlier never suppresses it (dispatched here
        whatever was seen). `echoed`: the broker will send it back (MQTT 3.1.1), so its bytes
        are kept until then and the echo is dropped unread."""
        self._sent.add(out.id)
        if echoed:
            self._emitted[out.id] = out
            if len(self._emitted) > self._emitted_cap:
                self._emitted.popitem(last=False)
        self._seen.add(_dedup_key(out.event.node, out.event.kind, out.id))
        self._accept(out.event, out.payload)

    def _accept(self, event: Event, payload: Payload) -> None:
        self.stats.accepted += 1
        self.stats.by_kind[event.kind] += 1
        self.dispatch(event, payload)

    def emitted_here(self, event_id: str) -> bool:
        """Whether this node sent the event itself (its dial, its gateway), not a client of the
        broker (within the last `dedup_window` events it sent)."""
        return event_id in self._sent

    def _own_echo(self, parsed: ParsedTopic | None, raw: bytes) -> bool:
        # Over MQTT 3.1.1 every event the node emits comes back from the broker (it subscribes
        # to gibsey/v1/#). Parsing and validating it again would cost more than the ritual that
        # made it, so an echo byte-for-byte what we sent is dropped unread. Anything else,
        # including a message that reuses one of our ids, is validated like any input.
        if parsed is None or parsed.node_id != self.node_id or raw[:7] != b'{"id":"':
            return False
        key = raw[7:39].decode("ascii", "replace")
        own = self._emitted.get(key)
        if own is None or own.raw != raw:
            return False
        del self._emitted[key]
        return True

    def dispatch(self, event: Event, payload: Payload) -> None:
        traced = event.trace
        if traced is None and (event.kind not in TURN_KINDS or not trace.enabled()):
            self._dispatch(event, payload)  # the untraced path: one attribute, one lookup
            return
        attributes = {"gibsey.node": self.node_id, "gibsey.event_id": event.id}
        with trace.span(f"router {event.kind}", traced, attributes):
            self._dispatch(event, payload)

    def _dispatch(self, event: Event, payload: Payload) -> None:
        for name, inline, local_only in self._inline.get(event.kind, ()):
            if local_only and event.node != self.node_id:
                continue
            try:
                inline(event, payload)
            except Exception as exc:
                log.exception("inline handler %s failed on %s %s", name, event.kind, event.id)
                self._alert(
                    SafetyAlert(
                        reason="handler_failed",
                        detail=f"{name} on {event.kind} {event.id}: {exc!r}"[:16_000],
                        severity="critical",
                    )
                )
        for reg in self._by_kind.get(event.kind, ()):
            if reg.local_only and event.node != self.node_id:
                continue
            if reg.admit is not None and not self._admitted(reg, event, payload):
                continue
            if reg.queue.full():
                # Counted here, said by the node once per interval with the count
                # (node/spine/drops.py), in its status and /metrics: never an alert per drop.
                dropped, _ = reg.queue.get_nowait()
                reg.queue.task_done()
                reg.dropped += 1
                self.stats.dropped += 1
                reg.queue.put_nowait((event, payload))
                if reg.on_drop is not None:
                    self._told_of_drop(reg, dropped)
                continue
            reg.queue.put_nowait((event, payload))

    def _admitted(self, reg: Registration, event: Event, payload: Payload) -> bool:
        """`reg`'s admission of `event` at arrival; one that raises admits nothing (logged)."""
        assert reg.admit is not None
        try:
            return reg.admit(event, payload)
        except Exception:
            log.exception("admission of %s %s to %s failed", event.kind, event.id, reg.name)
            return False

    def _told_of_drop(self, reg: Registration, dropped: Event) -> None:
        assert reg.on_drop is not None
        try:
            reg.on_drop(dropped)
        except Exception:  # a listener's fault must not stop the dispatch of the rest
            log.exception("drop handler of %s failed on %s", reg.name, dropped.id)


def _dedup_key(node: str, kind: str, event_id: str) -> str:
    return f"{node}\x00{kind}\x00{event_id}"  # NUL: in no topic level (MQTT forbids it)
