"""The node daemon: identity, clock, broker connection, router and status, in one asyncio loop.

`Node` is what `gibsey up` runs, and what tests start in-process. Parts attach by registering
router handlers (`node.router.register(...)`) and put events on the spine with `node.emit(...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gibsey import __version__
from gibsey.core import trace
from gibsey.core.announce import RUNNING_BROKER_FILE, running_broker_record
from gibsey.core.envelope import (
    Event,
    NodeStatus,
    Outgoing,
    Payload,
    Rejection,
    SafetyAlert,
    encode_event,
)
from gibsey.core.identity import Identity, load_or_create, write_atomic
from gibsey.core.lamport import LAMPORT_FILENAME, LamportAhead, LamportClock
from gibsey.core.rate import RateMeter
from gibsey.core.storage import ALERT_REASON, EPISODE_FILE, DiskHealth, StorageError, episode_json
from gibsey.core.topics import ALL_EVENTS, status_topic, topic_for
from gibsey.node.config import GibseyConfig
from gibsey.node.parts import Parts, attach_parts
from gibsey.node.spine.broker import EmbeddedBroker, embedded_broker
from gibsey.node.spine.client_id import node_client_id
from gibsey.node.spine.discovery import HA_ONLINE, discovery_messages, ha_status_topic
from gibsey.node.spine.drops import HANDLER_OVERLOADED, OUTBOX_FULL, THROTTLED, DropAlerts, Due
from gibsey.node.spine.inputs import VisitorInputs
from gibsey.node.spine.router import Router
from gibsey.node.spine.spine import Spine
from gibsey.node.watchdog.part import record_rebirth
from gibsey.node.watchdog.rebirth import RunRecord, lost_deaths
from gibsey.node.watchdog.sdnotify import Notifier

log = logging.getLogger("gibsey.node")
# How often a young node's run record is refreshed (then more rarely: rebirth.py): a dead run's
# uptime is its last refresh's, at most this much short while the node is young.
HEARTBEAT_S = 10.0
# While the node drops events, one safety/alert per reason this often, with the count.
DROP_ALERT_S = 10.0
# Home Assistant's birth message gets the node announced again at most this often.
HA_REANNOUNCE_S = 5.0


class Node:
    def __init__(self, data_dir: Path, config: GibseyConfig, node_id: str | None = None) -> None:
        self.data_dir = data_dir
        self.config = config
        self.identity: Identity = load_or_create(data_dir, node_id)
        self.node_id = self.identity.node_id
        # Every writer of the data directory reports to this one, so a full or failing disk is
        # said once per episode (safety/alert disk_full), whichever write hit it first.
        self.disk = DiskHealth(self._disk_changed, data_dir)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsaid: SafetyAlert | None = None  # a disk change before start(), said at start
        # Events sent this turn of the loop, for their handlers at the next (send): one callback
        # for all of them, not one each.
        self._unhandled: list[tuple[Outgoing, bool]] = []
        # Home Assistant's births: the next re-announcement, if one is due, and the last one's.
        self._ha_reannounce: asyncio.TimerHandle | None = None
        self._ha_announced_at = -HA_REANNOUNCE_S
        # A lost ceiling is said once the ledger is open (_resume_clock): past what it holds.
        self.clock = LamportClock(data_dir / LAMPORT_FILENAME, disk=self.disk, say_damage=False)
        self.router = Router(
            self.node_id,
            alert_sink=self._publish_alert,
            max_payload=config.node.max_payload,
            queue_size=config.node.handler_queue,
            on_event=self._observe,
        )
        # Visitors' turns and questions, bounded per source and node-wide whatever their names
        # (node/spine/inputs.py): the ritual pipeline and the agents ask it before any work.
        self.inputs = VisitorInputs(
            config.node.visitor_inputs_per_second, config.node.visitor_inputs_per_source_per_second
        )
        # What each running part gives the others (node/parts.py), filled by attach_parts.
        self.parts = Parts()
        self._closers: list[Callable[[], None]] = []
        self._drainers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._extra_subscriptions: list[tuple[str, Callable[[str, bytes], object]]] = []
        self.notifier = Notifier()
        self.run_record = RunRecord(data_dir)
        # The run record's shortest heartbeat interval (it grows with the uptime: rebirth.py;
        # tests shorten it).
        self.heartbeat_s = HEARTBEAT_S
        self.drop_alerts = DropAlerts(DROP_ALERT_S, time.monotonic())
        self.embedded: EmbeddedBroker | None = None
        self._said_broker = False  # RUNNING_BROKER_FILE written: removed at stop
        self.spine: Spine | None = None
        self.started_at = time.monotonic()
        self.rate = RateMeter()
        self.events_per_s = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._services: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        # One trace per turn (core/trace.py): spans over OTLP when [telemetry] names an endpoint.
        trace.install_log_records()
        stop_tracing = trace.configure(config.telemetry, self.node_id)
        if stop_tracing is not None:
            self.add_closer(stop_tracing)
        attach_parts(self)
        self._resume_clock()
        if self.config.node.discovery_prefix:
            self.add_subscription(
                ha_status_topic(self.config.node.discovery_prefix), self._on_home_assistant
            )

    def _resume_clock(self) -> None:
        """A Lamport clock whose ceiling file was lost (emptied or overwritten by the card, or
        gone from a node whose ledger holds entries) resumes past the highest Lamport the node
        can see of its own: its ledger's entries, its own feed's last one among them (events
        it sent carried them: gift/txn, ritual/performed). Said in one line. From 0 it would
        order the node's next events before those it already sent."""
        found, path = self.clock.found, self.data_dir / LAMPORT_FILENAME
        if isinstance(found, int):
            return
        ledger = self.parts.ledger
        floor = ledger.store.max_lamport if ledger is not None else 0
        if found is None:  # missing: a new node, unless its ledger holds entries
            if not floor:
                return
            lost = f"{path} is missing"
        elif not found.raw.strip():
            lost = (
                f"{path} is empty ({len(found.raw)} bytes; a card that lost its contents looks so)"
            )
        else:
            lost = str(found)
        if not self.clock.resume_past(floor):
            log.warning(
                "%s: the Lamport clock starts again from 0 (its ledger holds no entry to resume "
                "past), so this node's next events may be ordered before its earlier ones",
                lost,
            )
            return
        log.warning(
            "%s: the Lamport clock resumes past %d, the highest Lamport in this node's ledger "
            "(its own feed's last entry among them), not from 0 below the events it sent",
            lost,
            floor,
        )

    def add_subscription(self, topic_filter: str, callback: Callable[[str, bytes], object]) -> None:
        """Have messages on `topic_filter` (outside the event topics) handed to `callback` on the
        node's own broker connection, from the next connect on."""
        self._extra_subscriptions.append((topic_filter, callback))
        if self.spine is not None:
            self.spine.add_subscription(topic_filter, callback)

    def add_drainer(self, drain: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Await `drain()` at a clean stop, before services are cancelled (bounded by 5 s), so
        work a part has accepted is finished rather than dropped."""
        self._drainers.append(drain)

    def add_closer(self, close: Callable[[], None]) -> None:
        """Call `close()` when the node stops (after its services are cancelled)."""
        self._closers.append(close)

    def alert(self, alert: SafetyAlert, paced: bool = False) -> None:
        """Report something that went wrong, through the router's rate limit (`paced`: said at
        most once a minute a kind by its part already, so never lost to it: Router.report)."""
        self.router.report(alert, paced)

    def add_service(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` as a task while the node runs (started by start(), cancelled by stop()).
        A service that raises is logged and reported as a safety/alert; the node keeps serving."""
        self._services.append((name, factory))
        if self.spine is not None:
            self._tasks.append(asyncio.create_task(self._supervise(name, factory), name=name))

    async def _supervise(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("service %s failed", name)
            self._publish_alert(
                SafetyAlert(reason="service_failed", detail=f"{name}: {exc!r}", severity="critical")
            )

    # -- events ---------------------------------------------------------------------------------
    def _observe(self, event: Event) -> None:
        # Every event from the broker moves the clock past it, so whatever the node emits in
        # response is ordered after its cause. One stamped too far ahead to believe is refused
        # at the boundary (the router counts and alerts it), never believed only in part.
        try:
            self.clock.observe(event.lamport)
        except LamportAhead as exc:
            raise Rejection("lamport_ahead", str(exc)) from None

    def send(
        self,
        kind: str,
        payload: Payload,
        actor: str = "node",
        *,
        handle_now: bool = False,
        qos: int = 1,
    ) -> tuple[Outgoing, asyncio.Future[None]]:
        """Put an event of this node on the spine (QoS 1; sent as soon as a broker is there) and
        have this node's handlers take it: never after a broker round trip, nor waiting for a
        broker at all (the broker sends the node nothing it published: MQTT 5's no local).
        They take it at the loop's next turn, once what this read answers has been written
        (`gibsey bench spine`: 40 us off the round trip), or at once with `handle_now` (the
        dial's turns: the ritual runs now). Returns what was sent and a future that resolves
        when the broker has acknowledged it. The cheapest way to emit: no Event object is built
        unless a handler takes it. `qos=0` for what may be lost with a broken connection (an
        answer's tokens: its final event carries the whole answer)."""
        out = encode_event(self.node_id, kind, payload, self.clock.tick(), actor)
        acked = self.publish_raw(kind, out.raw, qos)
        echoed = self.spine is not None and self.spine.echoes_own
        if handle_now:
            self.router.sent(out, echoed)
        else:
            # One loop callback for every event sent this turn (a ritual sends four): fewer
            # objects a turn, and fewer of the collector's pauses (gibsey bench vm's rotations).
            self._unhandled.append((out, echoed))
            if len(self._unhandled) == 1:
                asyncio.get_running_loop().call_soon(self._handle_sent)
        return out, acked

    def _handle_sent(self) -> None:
        """The handlers of the events sent in the last turn of the loop, in the order sent. One
        that raises is logged, as the loop logs a failing callback, and the rest go on."""
        sent, self._unhandled = self._unhandled, []
        for out, echoed in sent:
            try:
                self.router.sent(out, echoed)
            except Exception:
                log.exception("handling %s %s failed", out.kind, out.id)

    def emit(self, kind: str, payload: Payload, actor: str = "node") -> Event:
        """Like send, returning the event."""
        return self.send(kind, payload, actor)[0].event

    def publish_raw(self, kind: str, raw: bytes, qos: int = 1) -> asyncio.Future[None]:
        """Publish an encoded event of this node on its topic (the one seam to the broker)."""
        assert self.spine is not None, "node not started"
        return self.spine.publish(topic_for(self.node_id, kind), raw, qos=qos)

    def _publish_alert(self, alert: SafetyAlert) -> None:
        if self.spine is not None:
            self.emit("safety/alert", alert)

    # -- the disk ---------------------------------------------------------------------------------
    def _disk_changed(self, error: StorageError | None) -> None:
        """The disk began (error) or stopped (None) refusing writes; called from any thread.
        Said once per episode, outside the router's rate limit (DiskHealth is the limit)."""
        if error is not None:
            log.error("the disk refuses writes: %s", error)
            alert = SafetyAlert(
                reason=ALERT_REASON,
                detail=f"{error.errno_name}: {error}. Writes are refused (HTTP 507) and nothing "
                "is stored until the disk takes writes again; reads and rituals go on, and "
                "writing resumes by itself",
                severity="critical",
            )
        else:
            episode = self.disk.last_episode
            refused = episode.refused if episode is not None else 0
            log.warning("the disk takes writes again (%d writes were refused)", refused)
            alert = SafetyAlert(
                reason="disk_recovered",
                detail=f"the disk takes writes again; {refused} writes were refused meanwhile",
                severity="info",
            )
        loop = self._loop
        if loop is None or loop.is_closed():
            self._unsaid = alert  # e.g. the clock's ceiling refused while the node was made
            return
        loop.call_soon_threadsafe(self._publish_alert, alert)
        if error is None:
            loop.call_soon_threadsafe(self._record_disk_episode)

    def _record_disk_episode(self) -> None:
        """Keep the episode that just ended for `gibsey doctor` (it could not be written while
        the disk refused writes)."""
        episode = self.disk.last_episode
        if episode is not None:
            doc = episode_json(episode, time.time())
            self._write_safely(lambda: write_atomic(self.data_dir / EPISODE_FILE, doc))

    def _write_safely(self, write: Callable[[], None]) -> None:
        """A write of the node's own files (run record, ...): a disk that refuses it is reported,
        never fatal, and one that takes it again ends the episode."""
        try:
            write()
        except StorageError as exc:
            self.disk.refused_write(exc)
        except OSError as exc:
            log.warning("could not write in %s: %s", self.data_dir, exc)
        else:
            self.disk.wrote()

    # -- status -----------------------------------------------------------------------------------
    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def status(self, state: str = "online") -> NodeStatus:
        drops = self.drops()
        return NodeStatus(
            state="online" if state == "online" else "offline",
            node=self.node_id,
            version=__version__,
            broker=self.spine.url if self.spine else "",
            events_per_s=round(self.events_per_s, 2),
            uptime_s=round(self.uptime, 1),
            events_total=self.router.stats.accepted,
            rejected_total=self.router.stats.rejected_total,
            broker_connects=self.spine.stats.connects if self.spine else 0,
            outbox_dropped=drops[OUTBOX_FULL],
            handler_dropped=drops[HANDLER_OVERLOADED],
            throttled=drops[THROTTLED],
            ledger_pending=self.parts.glyph.ledger_pending if self.parts.glyph else 0,
        )

    def drops(self) -> dict[str, int]:
        """What the node dropped since it started, by reason (node/spine/drops.py): its status,
        /metrics and the drop alerts read this."""
        agents = self.parts.agents
        return {
            OUTBOX_FULL: self.spine.stats.outbox_dropped if self.spine else 0,
            HANDLER_OVERLOADED: self.router.stats.dropped,
            THROTTLED: self.inputs.refused
            + (agents.rotations.throttled + agents.requests.throttled if agents else 0),
        }

    def _say_drops(self) -> None:
        """A safety/alert for each reason the node dropped events since it last said so, at
        most once per DROP_ALERT_S: outside the router's alert budget, which a flood of bad
        input may have spent (this interval is the limit)."""
        for due in self.drop_alerts.due(self.drops(), time.monotonic()):
            detail = (
                f"{due.dropped} dropped in the last {due.since_s:.0f}s ({due.total} since the "
                f"start): {self._why_dropped(due)}"
            )
            log.warning("%s: %s", due.reason, detail)
            self._publish_alert(SafetyAlert(reason=due.reason, detail=detail))

    def _why_dropped(self, due: Due) -> str:
        if due.reason == OUTBOX_FULL:
            return self.spine.stats.last_drop if self.spine else ""
        if due.reason == HANDLER_OVERLOADED:
            behind = [f"{r.name} {r.dropped}" for r in self.router.registrations if r.dropped]
            return "handlers behind, oldest events dropped: " + ", ".join(behind)
        agents = self.parts.agents
        actors = agents.rotations.throttled + agents.requests.throttled if agents else 0
        return (
            "visitors' turns and questions over the flood bounds were refused, with no reply: "
            f"{self.inputs.describe()}, {actors} over an actor's"
        )

    def _status_bytes(self, state: str = "online") -> bytes:
        return self.status(state).model_dump_json().encode()

    def _on_connect(self) -> None:
        assert self.spine is not None
        self.spine.publish_latest(status_topic(self.node_id), self._status_bytes())
        self._announce_to_home_assistant()

    def _announce_to_home_assistant(self) -> None:
        prefix = self.config.node.discovery_prefix
        if prefix and self.spine is not None:
            for msg in discovery_messages(self.node_id, prefix):
                self.spine.publish(msg.topic, msg.payload, retain=msg.retain)

    def _on_home_assistant(self, _topic: str, payload: bytes) -> None:
        """Home Assistant's birth message: it (re)started and may have lost what it knew, so the
        node and its dials announce themselves again: at once, but at most once every
        HA_REANNOUNCE_S (any client may publish the birth: 200 of them made 2,001 retained
        messages); births meanwhile share the next announcement."""
        if payload.strip() != HA_ONLINE or self._ha_reannounce is not None:
            return
        wait_s = self._ha_announced_at + HA_REANNOUNCE_S - time.monotonic()
        loop = asyncio.get_running_loop()
        self._ha_reannounce = loop.call_later(max(0.0, wait_s), self._reannounce_to_home_assistant)

    def _reannounce_to_home_assistant(self) -> None:
        self._ha_reannounce = None
        self._ha_announced_at = time.monotonic()
        self._announce_to_home_assistant()
        if self.parts.dial is not None:
            self.parts.dial.announce_all()

    async def _status_loop(self) -> None:
        last_published = 0.0
        while True:
            await asyncio.sleep(1.0)
            self.events_per_s = self.rate.sample(self.router.stats.accepted)
            self._say_drops()
            self.router.refusals.flush()  # the refusals held back, once their line is due
            now = time.monotonic()
            if now - last_published >= self.config.node.status_interval:
                last_published = now
                self.notifier.status(self.summary())
                if self.spine and self.spine.connected:
                    self.spine.publish_latest(status_topic(self.node_id), self._status_bytes())
            if self.run_record.heartbeat_due(self.heartbeat_s, self.disk.episode is not None):
                # On a worker thread: a write and two fsyncs, tens of ms on an SD card, during
                # which a dial turn would wait (RunRecord serialises it with the clean end).
                await asyncio.to_thread(self._write_safely, self.run_record.heartbeat)

    def summary(self) -> str:
        """One readable line: systemd's STATUS= and the log's status line."""
        broker = "no broker"
        if self.spine is not None:
            broker = f"broker {self.spine.url} " + (
                "connected" if self.spine.connected else "unreachable"
            )
        disk = ", the disk refuses writes" if self.disk.episode is not None else ""
        return (
            f"node {self.node_id}: {broker}, {self.events_per_s:.1f} events/s, "
            f"{self.router.stats.accepted} events, {self.router.stats.rejected_total} rejected"
            f"{disk}"
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def _say_broker(self, url: str) -> None:
        """Where the broker is, for the commands run beside the node (their announcements,
        core/announce.py), when this process chose it alone: `--embedded-port`, `--broker`."""
        doc = running_broker_record(url)
        path = self.data_dir / RUNNING_BROKER_FILE
        self._write_safely(lambda: write_atomic(path, doc, mode=0o600))
        self._said_broker = True

    async def start(self, broker_url: str | None = None, *, say_broker: bool = False) -> None:
        """Connect to `broker_url`, else the configured broker, else the embedded one, and run.
        `say_broker`: the configured broker came from the command line (`gibsey up --broker`),
        which the commands beside the node do not read: written for them (_say_broker)."""
        settings = self.config.node
        url = broker_url or settings.broker
        if not url:
            self.embedded = embedded_broker(
                settings.embedded_broker,
                settings.embedded_host,
                settings.embedded_port,
                self.data_dir,
                in_ram=settings.embedded_broker_store == "ram",
            )
            await self.embedded.start()
            url = self.embedded.url
        if say_broker or url != settings.broker:  # not what gibsey.toml (or GIBSEY_BROKER) says
            self._say_broker(url)
        offline = json.dumps({"state": "offline", "node": self.node_id}).encode()
        self.spine = Spine(
            url,
            client_id=node_client_id(self.data_dir, self.node_id),
            subscriptions=[ALL_EVENTS],
            on_message=self.router.handle_message,
            will=(status_topic(self.node_id), offline),
            on_connect=self._on_connect,
            # amqtt speaks only MQTT 3.1.1: no MQTT 5 connect for it to refuse first.
            mqtt5=self.embedded is None or self.embedded.name != "amqtt",
        )
        for topic_filter, callback in self._extra_subscriptions:
            self.spine.add_subscription(topic_filter, callback)
        self.started_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        death = self.run_record.previous_death()
        lost = lost_deaths(self.data_dir)
        if lost:
            log.warning("%s", lost)
        self._write_safely(self.run_record.heartbeat)
        self.router.start()
        self._tasks = [
            asyncio.create_task(self.spine.run(), name="spine"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog"),
        ]
        for name, factory in self._services:
            self._tasks.append(asyncio.create_task(self._supervise(name, factory), name=name))
        if death is not None:
            try:
                record_rebirth(self, death)
            except StorageError as exc:  # reported by the ledger; the node serves all the same
                log.error("the previous run's death could not be recorded: %s", exc)
                self.disk.refused_write(exc)
        if self._unsaid is not None:
            self._publish_alert(self._unsaid)  # queued in the outbox until the broker is there
            self._unsaid = None
        # Serving: events are accepted and queued from here on, broker or not (a missing broker
        # is retried, not a reason for systemd to restart the node).
        self.notifier.ready(self.summary())

    async def stop(self) -> None:
        """Clean stop: say offline (retained), finish queued work, disconnect."""
        self.notifier.stopping()
        if self._ha_reannounce is not None:
            self._ha_reannounce.cancel()
        for drain in self._drainers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain(), timeout=5.0)
        if self.spine is not None and self.spine.connected:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.router.drain(), timeout=2.0)
            self.spine.publish_latest(status_topic(self.node_id), self._status_bytes("offline"))
            # Everything already handed to the spine gets its chance to be acknowledged.
            await self.spine.flush(timeout_s=3.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.router.stop()
        for close in reversed(self._closers):
            try:
                close()
            except StorageError as exc:  # what the write was, and why: no traceback
                log.error("at the stop, a last write was not made (not written): %s", exc)
            except Exception:
                # E.g. a part's last write on a disk that refuses it: the others still close.
                log.exception("closing %r failed", close)
        self._closers = []
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        if self._said_broker:
            with contextlib.suppress(OSError):
                (self.data_dir / RUNNING_BROKER_FILE).unlink()
        self._write_safely(self.run_record.end)
        self.notifier.close()
