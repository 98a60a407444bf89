"""The node's MQTT connection: connect, retry, resubscribe, and an outbox that loses nothing.

Built on the one MQTT layer (core/mqtt.py: paho driven by the event loop). What this adds on top:

* The broker may be missing at start, restarted, or vanish: `run()` keeps (re)connecting with
  exponential backoff, capped short for a broker on this machine, and says plainly what is
  happening.
* The session is persistent (a stable client id, clean_session off) and every subscription is
  QoS 1: while the node reconnects, the broker keeps its subscriptions and queues the events
  for it; with the broker's persistence on (the image's drop-in) that holds across a broker
  restart, kill -9 included, so no event the broker acknowledged to its sender is lost.
* `publish()` never fails for lack of a connection. The message goes into a bounded outbox and is
  sent as soon as a connection exists; the returned future resolves when the broker acknowledged
  it (PUBACK for QoS 1). A message whose send was cut by a disconnect goes back to the front of the
  outbox and is sent again after reconnecting: at-least-once, and the router drops duplicates by
  event id, so a handler sees each event exactly once. A message in flight ACK_STALL_S without
  its PUBACK ends the connection the same way: a broker may drop acknowledgements (Mosquitto,
  when its queue to the node is full), and MQTT never sends a PUBLISH twice on one connection.
* The outbox is bounded: when it is full the oldest message is dropped, its future fails with
  what happened (`OutboxFull`), and the drop is counted (`stats.outbox_dropped`), which the node
  reports in its status, /metrics and a rate-limited alert (node/daemon.py).
* The last will marks the node offline (retained) if the connection dies without a goodbye.
* It speaks MQTT 5 and subscribes with "no local": the broker never sends the node what it
  published itself. Its events are handled when they are sent (Node.send), and each echo cost
  the node more CPU than the event (77 of 130 us an event, `gibsey bench spine`). A broker that
  speaks only MQTT 3.1.1 (the embedded amqtt fallback) is spoken to in 3.1.1 for the rest of
  the run: the echoes come back, and the router drops each without parsing it.

The hot path is paho's own callbacks, on the event loop's thread: a message is routed inside
paho's read (`_on_message`), a PUBACK resolves its future and refills the window in
`_on_publish`, and what `_pump` hands to paho inside a read (a handler's answer) leaves as that
read returns, anything else at the end of the same loop iteration (core/mqtt.py). Measured by
`gibsey bench spine`: the spine alone as an echo costs the CPU of a bare paho echo per event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gibsey.core.mqtt import (
    MAX_MESSAGE_BYTES,
    ClientSettings,
    ClosedBeforeConnack,
    Connection,
    ConnectRefused,
    MqttError,
    parse_broker_url,
)
from gibsey.core.paced import PacedLog
from gibsey.core.topics import STATUS_KIND, parse_topic

log = logging.getLogger("gibsey.spine")

KEEPALIVE_S = 10
# A message in flight this long without its PUBACK ends the connection: the spine reconnects and
# sends what is unacknowledged again (at-least-once; the router drops the duplicates). Mosquitto
# drops any packet to a client whose queue is full, PUBACKs among them (eclipse-mosquitto#3542:
# a flood of QoS 0 input the node reads slower than it comes), and MQTT never sends a PUBLISH
# again on the same connection: the window stayed full of messages the broker had taken, and
# the node published nothing more, its status frozen "online", until the broker restarted.
ACK_STALL_S = 10.0
ACK_CHECK_S = 1.0  # how often the oldest message in flight is looked at
FIRST_RETRY_S = 0.25
# Trying a broker on this machine again costs a refused connect on loopback, nothing: the node
# is back within a second of the broker (a backoff grown to 30 s kept it away for up to half a
# minute after a 5 s broker restart, issue 16). One elsewhere on the LAN is spared a little more.
LOCAL_RETRY_MAX_S = 1.0
REMOTE_RETRY_MAX_S = 10.0
RETRY_SAID_S = 30.0  # while the broker stays away, the log says so this often
# A broker that closes the connection this soon after it was made, before answering CONNECT, at
# every try, speaks no MQTT there: a TLS listener does that (issue: mqtt:// to port 8883 logged
# `connection lost` forever, with no hint).
AT_ONCE_S = 1.0
NO_MQTT_THERE = (
    "at once at every try: a TLS listener (not supported: mqtt:// only) or another protocol "
    "than MQTT on that port does this, and a Mosquitto out of memory (its memory_limit: its "
    "log says 'Out of memory') to every client"
)
END_SESSION_TIMEOUT_S = 2.0  # a clean stop waits this long at most to end the session
# How long the broker keeps the node's session while the node is away (MQTT 3.1.1 has no expiry
# on the wire: there the broker's persistent_client_expiration, images/mosquitto/gibsey.conf).
SESSION_EXPIRY_S = 7 * 24 * 3600
# CONNACK's answer to an MQTT 5 CONNECT from a broker that speaks only 3.1.1: 0x84 in MQTT 5's
# codes; a 3.1.1 broker's "unacceptable protocol version" (1) reads as the same to paho.
UNSUPPORTED_PROTOCOL = frozenset({132, 1})


def is_local(host: str) -> bool:
    """Whether `host` names this machine (a loopback address or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OutboxFull(OverflowError):
    """The message was dropped from a full outbox before it could be sent (the reason says
    whether the broker was away or only slower than the node)."""


# The outbox holds at most this many bytes of payload as well as outbox_limit messages: 10,000
# messages of up to MAX_MESSAGE_BYTES each were 1.3 GB a broker away could make the node hold.
OUTBOX_MAX_BYTES = 16 * 1024 * 1024


class MessageTooLarge(MqttError):
    """The message was not sent: larger than the broker takes (MAX_MESSAGE_BYTES)."""


@dataclass(slots=True)
class QueuedMessage:
    """One MQTT publish waiting in the outbox or for its PUBACK (the bytes of an event, a retained
    status, a discovery config); `done` resolves when the broker has acknowledged it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    done: asyncio.Future[None]


@dataclass
class SpineStats:
    connects: int = 0
    published: int = 0
    received: int = 0
    outbox_dropped: int = 0
    last_drop: str = ""  # why the last message was dropped from the outbox
    too_large: int = 0  # messages refused: over the broker's MAX_MESSAGE_BYTES
    retained_ignored: int = 0  # events the broker kept (retained) and handed over at subscribe
    ack_stalls: int = 0  # connections ended because the broker acknowledged nothing in flight
    last_error: str = ""


MessageHandler = Callable[[str, bytes], object]


class LiveOnly:
    """A part's callback that takes only messages of the moment (a dial's frames, each a turn):
    what the broker retained and hands over at subscribe is an old message, ignored and counted
    as a retained event is, never handed to it. (The dial bridge's retained state documents are
    the opposite: learned from at each connect, so those callbacks are not wrapped.)"""

    def __init__(self, callback: MessageHandler) -> None:
        self.callback = callback

    def __call__(self, topic: str, payload: bytes) -> object:
        return self.callback(topic, payload)


class Spine:
    def __init__(
        self,
        broker_url: str,
        client_id: str,
        subscriptions: list[str],
        on_message: MessageHandler,
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], None] | None = None,
        outbox_limit: int = 10_000,
        inflight: int = 64,
        backoff_max_s: float | None = None,  # None: short for a local broker, longer for others
        *,
        mqtt5: bool = True,  # False for a broker known to speak only 3.1.1 (amqtt)
        no_local: bool = True,  # `subscriptions` never deliver what this client published
    ) -> None:
        self.host, self.port = parse_broker_url(broker_url)
        self.url = f"mqtt://{self.host}:{self.port}"
        self._settings = ClientSettings(
            broker_url,  # with its credentials, if it names any (self.url shows none)
            client_id,  # the same on every connection: the broker resumes the session by it
            keepalive_s=KEEPALIVE_S,
            will=will,
            # No window in paho: the spine keeps its own (`_pump`), and paho's would repeat it
            # at a price, a scan of every message in flight on each PUBACK (`_update_inflight`).
            max_inflight=0,
            session_expiry_s=SESSION_EXPIRY_S,
            mqtt5=mqtt5,
        )
        self._subscriptions = subscriptions
        self._no_local = no_local
        self._deliver = on_message
        self._said_retained = False  # a retained event ignored said in this connection
        self._on_connect = on_connect
        self._outbox: collections.deque[QueuedMessage] = collections.deque()
        self._outbox_limit = outbox_limit
        self._outbox_bytes = 0  # the payloads' bytes in _outbox (OUTBOX_MAX_BYTES)
        self._inflight_limit = inflight
        # The parts' own subscriptions: their filters, and (filter, callback) by filter to match.
        self._extra: list[str] = []
        self._extra_matcher = MQTTMatcher()  # type: ignore[no-untyped-call]
        self._waiting: dict[int, QueuedMessage] = {}  # by mid, the oldest first
        self._latest: dict[str, QueuedMessage] = {}  # by topic: sent before the outbox
        # The oldest message in flight at the last look, since when it has been the oldest, and
        # the bytes the connection had received then: looked at every ACK_CHECK_S, so the hot
        # path pays nothing for it.
        self._oldest_in_flight: tuple[int, float, int] | None = None
        self._conn: Connection | None = None
        if backoff_max_s is None:
            backoff_max_s = LOCAL_RETRY_MAX_S if is_local(self.host) else REMOTE_RETRY_MAX_S
        self._backoff_max_s = backoff_max_s
        self._retries = 0  # connection attempts since the broker went away
        self._closed_at_once = 0  # of those, the last ones closed at once before a CONNACK
        self._stopping = False  # cancelled: the node stops
        self.session_present = False  # the last connection resumed the run's session
        self._retry_said_at = 0.0
        self._connected = asyncio.Event()
        self.stats = SpineStats()
        self._refusals = PacedLog(log, "spine: ")

    # -- publishing ---------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue a message; the future resolves once the broker has acknowledged it (or fails:
        OutboxFull, MessageTooLarge)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._too_large(topic, payload, done):
            return done
        if len(self._outbox) >= self._outbox_limit:
            self._drop_oldest()
        # No done callback to keep a set of the unacknowledged: every message waits in the
        # outbox or in `_waiting` until its future is done, and `flush` looks there (a callback
        # per message cost a loop handle each, on the hot path).
        self._outbox.append(QueuedMessage(topic, payload, qos, retain, done))
        self._outbox_bytes += len(payload)
        while self._outbox_bytes > OUTBOX_MAX_BYTES and len(self._outbox) > 1:
            self._drop_oldest()
        self._pump()
        return done

    def publish_latest(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Publish a retained state whose newest value alone matters (the node's status): it goes
        out before anything waiting in the outbox, and replaces one of its topic not sent yet
        (whose future then resolves: superseded). Behind a backlog (a broker back after a
        restart, under a flood) the status otherwise waited for thousands of events: the
        retained "offline" of the will stayed for 99 s while the node performed turns."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._too_large(topic, payload, done):
            return done
        superseded = self._latest.pop(topic, None)
        if superseded is not None and not superseded.done.done():
            superseded.done.set_result(None)
        self._latest[topic] = QueuedMessage(topic, payload, 1, True, done)
        self._pump()
        return done

    @property
    def client_id(self) -> str:
        """The id this spine connects with (the broker resumes its session by it)."""
        return self._settings.client_id

    def _too_large(self, topic: str, payload: bytes, done: asyncio.Future[None]) -> bool:
        """Refuse (`done` fails, counted, logged at a limited rate) a payload the broker would
        answer by closing the connection: never sent, so it cannot wedge the session."""
        if len(payload) <= MAX_MESSAGE_BYTES:
            return False
        self.stats.too_large += 1
        why = f"{topic}: {len(payload)} bytes, over the broker's {MAX_MESSAGE_BYTES}"
        self.stats.last_drop = f"not sent: {why}"
        self._refusals.note("message too large, not sent", why)
        done.set_exception(MessageTooLarge(why))
        done.exception()  # retrieved: told by the count and the log, as a dropped message is
        return True

    def _drop_oldest(self) -> None:
        """Bounded memory: the oldest message waiting goes, its future fails saying what really
        happened, and the loss is counted (never silent, never a log line per message)."""
        dropped = self._outbox.popleft()
        self._outbox_bytes -= len(dropped.payload)
        if dropped.done.done():
            return  # cancelled by its publisher: nothing was lost
        self.stats.outbox_dropped += 1
        held = self._outbox_bytes + len(dropped.payload)
        waiting = f"{len(self._outbox) + 1} messages, {held / 2**20:.1f} MiB waiting"
        if self._connected.is_set():
            # A flood: the broker is there, only slower to acknowledge than the node publishes.
            why = f"outbox full ({waiting}): the broker acknowledges slower than the node sends"
        else:
            why = f"outbox full ({waiting}) while the broker was away"
        self.stats.last_drop = why
        dropped.done.set_exception(OutboxFull(why))
        # Retrieved here: a publisher that never awaits its future is told by the count, not by
        # asyncio logging "exception was never retrieved" once for every message dropped.
        dropped.done.exception()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message is acknowledged; False if the time ran out."""
        pending = {
            item.done
            for items in (self._latest.values(), self._outbox, self._waiting.values())
            for item in items
            if not item.done.done()
        }
        if not pending:
            return True
        _done, not_done = await asyncio.wait(pending, timeout=timeout_s)
        return not not_done

    @property
    def echoes_own(self) -> bool:
        """Whether the broker sends back what this spine publishes (its subscriptions match
        its topics): not with MQTT 5's no local, always with MQTT 3.1.1."""
        return not (self._settings.mqtt5 and self._no_local)

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def login_url(self) -> str:
        """The broker's URL with the node's credentials, for the node's other connection (the
        agents' MQTT 5 link): a closed broker refuses it otherwise. Never shown: `url` is."""
        return self._settings.url

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    # -- extra subscriptions --------------------------------------------------------------------
    def add_subscription(self, topic_filter: str, callback: MessageHandler) -> None:
        """Deliver messages matching `topic_filter` to `callback(topic, payload)` instead of the
        router, on this same connection (subscribed now if connected, and after every
        reconnect). For parts with their own wire format on their own topics, outside the
        event topics (gibsey/v1/<node>/<domain>/<event>), e.g. dial frames."""
        self._extra.append(topic_filter)
        self._extra_matcher[topic_filter] = (topic_filter, callback)
        if self._conn is not None and self._connected.is_set():
            self._subscribe_extra(self._conn, topic_filter)

    def _subscribe_extra(self, conn: Connection, topic_filter: str) -> None:
        """Subscribed with no local where the broker speaks MQTT 5, as the event topics are:
        what the node publishes there itself (a dial's retained state) never comes back, while
        what the broker retains, whoever published it, is still handed over at subscribe
        (how the dial bridge learns the dials of a run before). Its SUBACK needs no answer."""
        if self.echoes_own:
            conn.client.subscribe(topic_filter, qos=1)
        else:
            conn.client.subscribe(topic_filter, options=SubscribeOptions(qos=1, noLocal=True))

    def _deliver_extra(self, topic: str, payload: bytes, retained: bool = False) -> bool:
        """Hand a message to the part whose subscription it matches; False if none does. A
        retained one is not handed to a LiveOnly callback: ignored and counted."""
        matched = False
        for topic_filter, callback in self._extra_matcher.iter_match(topic):  # type: ignore[no-untyped-call]
            matched = True
            if retained and isinstance(callback, LiveOnly):
                self._ignore_retained(topic)
                continue
            try:
                callback(topic, payload)
            except Exception:  # a part's bug must not break the connection's read loop
                log.exception("subscription %s: callback failed on %s", topic_filter, topic)
        return matched

    # -- the fast path ---------------------------------------------------------------------------
    def _on_publish(
        self, c: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        item = self._waiting.pop(mid, None)
        if item is not None:
            self.stats.published += 1
            if not item.done.done():
                item.done.set_result(None)
            self._pump()

    def _on_message(self, c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        topic = message.topic
        # An event's topic (gibsey/v1/<node>/<domain>/<event>) is the router's; only others are
        # looked up among the parts' own subscriptions. The parts' filters are ours to match,
        # not paho's: paho walked its filter tree for every message, events included (~3% of
        # the node's CPU under a flood, `gibsey bench spine`). parse_topic is the router's own
        # (cached) test of an event topic.
        if self._extra and parse_topic(topic) is None:
            if self._deliver_extra(topic, bytes(message.payload), message.retain):
                return
        if message.retain:
            parsed = parse_topic(topic)
            # A node's status is retained by design (its own, and every other node's on the
            # broker): not an event, and the router passes it by.
            if parsed is not None and parsed.kind != STATUS_KIND:
                self._ignore_retained(topic)
                return
        self._deliver(topic, bytes(message.payload))

    def _ignore_retained(self, topic: str) -> None:
        """An event the broker retained and hands over at subscribe (a broker sets the flag only
        then, never on a live message): no new event, but anyone's old one, a visitor's turn
        among them, which would be performed (and minted) again at every start. Counted; the
        first of each connection said."""
        self.stats.retained_ignored += 1
        if not self._said_retained:
            self._said_retained = True
            log.warning(
                "ignored an event the broker retained on %s (and any more, counted): an old "
                "message handed over at subscribe is no new event; clear it with an empty "
                "retained publish",
                topic[:200],
            )

    def _pump(self) -> None:
        """Hand queued messages to paho while the in-flight window has room."""
        conn = self._conn
        if conn is None:
            return
        client = conn.client
        while self._latest and len(self._waiting) < self._inflight_limit:
            topic = next(iter(self._latest))
            item = self._latest.pop(topic)
            if not item.done.done() and not self._hand_over(client, item):
                self._latest[topic] = item
                return
        while self._outbox and len(self._waiting) < self._inflight_limit:
            item = self._outbox.popleft()
            self._outbox_bytes -= len(item.payload)
            if item.done.done():
                continue  # cancelled by its publisher
            if not self._hand_over(client, item):
                self._outbox.appendleft(item)
                self._outbox_bytes += len(item.payload)
                break

    def _hand_over(self, client: mqtt.Client, item: QueuedMessage) -> bool:
        """Give one message to paho (False: paho refused it, to be tried again later)."""
        info = client.publish(item.topic, item.payload, item.qos, item.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if item.qos == 0:
            self.stats.published += 1
            item.done.set_result(None)
        else:
            self._waiting[info.mid] = item
        return True

    def _ack_stalled(self, now: float, received: int) -> str:
        """Why the connection must end, when the oldest message in flight has waited
        ACK_STALL_S for its PUBACK (measured from the first look that saw it oldest); else "".
        `received`: the bytes the connection has read, which tell a broker that said nothing
        at all meanwhile (stopped, or the network to it cut) from one dropping PUBACKs."""
        if not self._waiting:
            self._oldest_in_flight = None
            return ""
        oldest = next(iter(self._waiting))
        if self._oldest_in_flight is None or self._oldest_in_flight[0] != oldest:
            self._oldest_in_flight = (oldest, now, received)
            return ""
        _mid, since, received_then = self._oldest_in_flight
        waited = now - since
        if waited < ACK_STALL_S:
            return ""
        if received == received_then:
            return (
                f"no answer from the broker within {waited:.0f} s: no PUBACK of "
                f"{len(self._waiting)} messages in flight, nor anything else (the broker stopped, "
                "or the network to it is cut)"
            )
        return (
            f"no acknowledgement for {waited:.0f} s of {len(self._waiting)} messages in flight "
            "(a broker drops them when its queue to the node is full)"
        )

    def _requeue_in_flight(self) -> None:
        """Messages sent but not acknowledged when the connection died go out again first."""
        unacked = list(self._waiting.values())
        self._waiting.clear()
        self._oldest_in_flight = None
        self._outbox.extendleft(reversed(unacked))
        self._outbox_bytes += sum(len(item.payload) for item in unacked)

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = FIRST_RETRY_S
        troubled = False  # a connect failed or a connection was lost since the start
        away = False  # the last attempt failed: the broker is still away
        while True:
            conn = Connection(self._settings)
            conn.client.on_publish = self._on_publish
            conn.client.on_message = self._on_message
            try:
                if not self.stats.connects:
                    await self._end_session()
                await conn.connect()
                self.stats.connects += 1
                self._said_retained = False
                # A run's first connection follows `_end_session`: nothing of the session is
                # left for it to resume, whatever the broker says (amqtt, the fallback, says it
                # resumed one).
                self.session_present = conn.session_present and self.stats.connects > 1
                self._say_connected(troubled)
                delay, away = FIRST_RETRY_S, False
                await self._serve(conn)
            except MqttError as exc:
                if self._mqtt5_refused(exc):
                    self._speak_mqtt311()
                    continue  # at once: the broker is there
                self.stats.last_error = str(exc)
                self._say_retrying(exc, delay, fresh=not away)
                troubled = away = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)

    def _mqtt5_refused(self, exc: MqttError) -> bool:
        return (
            isinstance(exc, ConnectRefused)
            and self._settings.mqtt5
            and exc.reason_code in UNSUPPORTED_PROTOCOL
        )

    def _speak_mqtt311(self) -> None:
        """The broker refused MQTT 5: speak 3.1.1 to it for the rest of the run (said once)."""
        log.info(
            "broker %s speaks MQTT 3.1.1 only: the node's own events come back from it, "
            "and are dropped unread",
            self.url,
        )
        self._settings = replace(self._settings, mqtt5=False)

    def _say_retrying(self, exc: MqttError, delay: float, fresh: bool) -> None:
        """Say that the broker is away when it goes, then every RETRY_SAID_S while it stays away
        (the capped retries come every second: a line each would bury the log in an outage)."""
        self._retries = 1 if fresh else self._retries + 1
        at_once = isinstance(exc, ClosedBeforeConnack) and exc.after_s < AT_ONCE_S
        self._closed_at_once = self._closed_at_once + 1 if at_once and not fresh else int(at_once)
        now = time.monotonic()
        if not fresh and now - self._retry_said_at < RETRY_SAID_S:
            return
        self._retry_said_at = now
        verb = "lost" if self.stats.connects else "not reachable"
        tried = "" if fresh else f", {self._retries} tries so far"
        why = str(exc) or "no answer"
        if self._closed_at_once == self._retries:  # every try since the broker went away
            why += f"; {NO_MQTT_THERE}"
        log.warning("broker %s %s (%s); retrying in %.1fs%s", self.url, verb, why, delay, tried)

    async def _end_session(self) -> None:
        """One clean connection: the broker ends the node's persistent session. The session
        lives as long as a run of the node, across every reconnect and broker restart in it:
        * before the run's first connection, it ends what a previous run left. What the broker
          queued there is the previous run's, and some of it was handled already (the dial's
          turns are handled when sent, not on their echo) by a router whose dedup (in memory)
          is gone: a second ritual for one turn. (MQTT 5 would say clean start on the first
          connection only; MQTT 3.1.1, which the embedded broker speaks, needs this one.)
        * at a clean stop, so that the broker queues nothing for a node that is not running
          (rewriting its saved database, growing, at every message: images/mosquitto)."""
        conn = Connection(replace(self._settings, session_expiry_s=0, will=None))
        await conn.connect()
        await conn.close()

    def _say_connected(self, troubled: bool) -> None:
        if self.session_present:
            session = "session resumed: what the broker queued for us comes now"
        elif self.stats.connects > 1:
            # The broker lost our subscriptions (restarted without persistence, or before it
            # saved them): what was published for us while we were away is gone.
            session = "new session: the broker kept nothing for us while we were away"
        else:
            session = "new session"
        level = logging.WARNING if troubled else logging.INFO
        log.log(level, "connected to broker %s (%s)", self.url, session)

    async def _serve(self, conn: Connection) -> None:
        """Subscribe, send the outbox, and route messages until the connection ends (raises
        MqttError then). Cancelled (the node stops): say goodbye to the broker."""
        self._conn = conn
        try:
            no_local = not self.echoes_own
            try:
                # Bounded as a PUBACK is: a broker that stops answering after its CONNACK left
                # the node waiting for a SUBACK until paho's keepalive gave up (20 s).
                async with asyncio.timeout(ACK_STALL_S):
                    for sub in self._subscriptions:
                        await conn.subscribe(sub, qos=1, no_local=no_local)
            except TimeoutError:
                why = f"no answer from the broker within {ACK_STALL_S:g} s: no SUBACK"
                conn.abort(why)
                raise MqttError(why) from None
            # Connected once subscribed: what is published for the node from here on reaches it.
            self._connected.set()
            for topic_filter in self._extra:
                self._subscribe_extra(conn, topic_filter)
            if self._on_connect:
                self._on_connect()
            self._pump()
            # Messages are handled in paho's read callback; here we only wait for the end, and
            # look at what is in flight meanwhile.
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ACK_CHECK_S):
                        raise MqttError(await conn.wait_closed())
                stalled = self._ack_stalled(time.monotonic(), conn.client.received)
                if stalled:  # said as the connection's end is (`_say_retrying`)
                    self.stats.ack_stalls += 1
                    conn.abort(stalled)
        except asyncio.CancelledError:
            self._stopping = True
            raise
        finally:
            self._conn = None
            self._connected.clear()
            self._requeue_in_flight()
            await conn.close()
            if self._stopping:
                with contextlib.suppress(MqttError, TimeoutError):
                    async with asyncio.timeout(END_SESSION_TIMEOUT_S):
                        await self._end_session()
