"""The node's MQTT connection: connect, retry, resubscribe, and an outbox that loses nothing.

Built on the one MQTT layer (core/mqtt.py: paho driven by the event loop). What this adds on top:

* The broker may be missing at start, restarted, or vanish: `run()` keeps (re)connecting with
  exponential backoff and says plainly what is happening.
* `publish()` never fails for lack of a connection. The message goes into a bounded outbox and is
  sent as soon as a connection exists; the returned future resolves when the broker acknowledged
  it (PUBACK for QoS 1). A message whose send was cut by a disconnect goes back to the front of the
  outbox and is sent again after reconnecting: at-least-once, and the router drops duplicates by
  event id, so a handler sees each event exactly once.
* The last will marks the node offline (retained) if the connection dies without a goodbye.

The hot path is paho's own callbacks, on the event loop's thread: a message is routed inside
paho's read (`_on_message`), a PUBACK resolves its future and refills paho's window in
`_on_publish`, and what `_pump` hands to paho leaves at the end of the same loop iteration.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gibsey.core.mqtt import ClientSettings, Connection, MqttError, parse_broker_url

log = logging.getLogger("gibsey.spine")

KEEPALIVE_S = 10
FIRST_RETRY_S = 0.25


@dataclass
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
    last_error: str = ""


MessageHandler = Callable[[str, bytes], object]


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
        backoff_max: float = 30.0,
    ) -> None:
        self.host, self.port = parse_broker_url(broker_url)
        self.url = f"mqtt://{self.host}:{self.port}"
        self._settings = ClientSettings(
            self.url, client_id, keepalive_s=KEEPALIVE_S, will=will, max_inflight=inflight
        )
        self._subscriptions = subscriptions
        self._deliver = on_message
        self._on_connect = on_connect
        self._outbox: collections.deque[QueuedMessage] = collections.deque()
        self._outbox_limit = outbox_limit
        self._unacked: set[asyncio.Future[None]] = set()
        self._inflight_limit = inflight
        self._extra: list[tuple[str, MessageHandler]] = []
        self._waiting: dict[int, QueuedMessage] = {}
        self._conn: Connection | None = None
        self._backoff_max = backoff_max
        self._connected = asyncio.Event()
        self.stats = SpineStats()

    # -- publishing ---------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue a message; the future resolves once the broker has acknowledged it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(self._outbox) >= self._outbox_limit:
            # Bounded memory while the broker is away: the oldest unacknowledged message goes,
            # its future fails, and the loss is counted (never silent).
            dropped = self._outbox.popleft()
            self.stats.outbox_dropped += 1
            if not dropped.done.done():
                dropped.done.set_exception(OverflowError("outbox full while the broker was away"))
        self._outbox.append(QueuedMessage(topic, payload, qos, retain, done))
        self._unacked.add(done)
        done.add_done_callback(self._unacked.discard)
        self._pump()
        return done

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message is acknowledged; False if the time ran out."""
        pending = set(self._unacked)
        if not pending:
            return True
        _done, not_done = await asyncio.wait(pending, timeout=timeout_s)
        return not not_done

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    # -- extra subscriptions --------------------------------------------------------------------
    def add_subscription(self, topic_filter: str, callback: MessageHandler) -> None:
        """Deliver messages matching `topic_filter` to `callback(topic, payload)` instead of the
        router, on this same connection (subscribed now if connected, and after every
        reconnect). For parts with their own wire format on their own topics, e.g. dial frames."""
        self._extra.append((topic_filter, callback))
        if self._conn is not None and self._connected.is_set():
            self._subscribe_extra(self._conn.client, topic_filter, callback)

    def _subscribe_extra(
        self, client: mqtt.Client, topic_filter: str, callback: MessageHandler
    ) -> None:
        def deliver(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            self.stats.received += 1
            try:
                callback(message.topic, bytes(message.payload))
            except Exception:  # a part's bug must not break the connection's read loop
                log.exception("subscription %s: callback failed on %s", topic_filter, message.topic)

        client.message_callback_add(topic_filter, deliver)
        client.subscribe(topic_filter, qos=1)  # not awaited: its SUBACK needs no answer

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
        self._deliver(message.topic, bytes(message.payload))

    def _pump(self) -> None:
        """Hand queued messages to paho while the in-flight window has room."""
        conn = self._conn
        if conn is None:
            return
        client = conn.client
        while self._outbox and len(self._waiting) < self._inflight_limit:
            item = self._outbox.popleft()
            if item.done.done():
                continue  # cancelled by its publisher
            info = client.publish(item.topic, item.payload, item.qos, item.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._outbox.appendleft(item)
                break
            if item.qos == 0:
                self.stats.published += 1
                item.done.set_result(None)
            else:
                self._waiting[info.mid] = item

    def _requeue_in_flight(self) -> None:
        """Messages sent but not acknowledged when the connection died go out again first."""
        unacked = list(self._waiting.values())
        self._waiting.clear()
        self._outbox.extendleft(reversed(unacked))

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = FIRST_RETRY_S
        troubled = False  # a connect failed or a connection was lost since the start
        while True:
            conn = Connection(self._settings)
            conn.client.on_publish = self._on_publish
            conn.client.on_message = self._on_message
            try:
                await conn.connect()
                self.stats.connects += 1
                if troubled:
                    log.warning("connected to broker %s", self.url)
                else:
                    log.info("connected to broker %s", self.url)
                delay = FIRST_RETRY_S
                await self._serve(conn)
            except MqttError as exc:
                self.stats.last_error = str(exc)
                verb = "lost" if self.stats.connects else "not reachable"
                log.warning(
                    "broker %s %s (%s); retrying in %.1fs",
                    self.url,
                    verb,
                    exc or "no answer",
                    delay,
                )
                troubled = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)

    async def _serve(self, conn: Connection) -> None:
        """Subscribe, send the outbox, and route messages until the connection ends (raises
        MqttError then). Cancelled (the node stops): say goodbye to the broker."""
        self._conn = conn
        self._connected.set()
        try:
            for sub in self._subscriptions:
                await conn.subscribe(sub, qos=1)
            for topic_filter, callback in self._extra:
                self._subscribe_extra(conn.client, topic_filter, callback)
            if self._on_connect:
                self._on_connect()
            self._pump()
            # Messages are handled in paho's read callback; here we only wait for the end.
            raise MqttError(await conn.wait_closed())
        finally:
            self._conn = None
            self._connected.clear()
            self._requeue_in_flight()
            await conn.close()
