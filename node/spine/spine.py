"""The node's MQTT connection: connect, retry, resubscribe, and an outbox that loses nothing.

Built on aiomqtt (asyncio-native, typed). What this adds on top:

* The broker may be missing at start, restarted, or vanish: `run()` keeps (re)connecting with
  exponential backoff and says plainly what is happening.
* `publish()` never fails for lack of a connection. The message goes into a bounded outbox and is
  sent as soon as a connection exists; the returned future resolves when the broker acknowledged
  it (PUBACK for QoS 1). A message whose send was cut by a disconnect goes back to the front of the
  outbox and is sent again after reconnecting: at-least-once, and the router drops duplicates by
  event id, so a handler sees each event exactly once.
* The last will marks the node offline (retained) if the connection dies without a goodbye.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("gibsey.spine")
# aiomqtt logs a warning for every publish waiting on an ack once more than ten are in flight;
# with an outbox of in-flight QoS 1 messages that is the normal case, not news.
logging.getLogger("mqtt").setLevel(logging.ERROR)


class BrokerUrlError(ValueError):
    pass


def parse_broker_url(url: str) -> tuple[str, int]:
    """mqtt://host:port -> (host, port); port defaults to 1883."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "tcp"):
        raise BrokerUrlError(f"broker {url!r}: only mqtt://host:port is supported")
    if not parsed.hostname:
        raise BrokerUrlError(f"broker {url!r}: no host name")
    try:
        port = parsed.port or 1883
    except ValueError as exc:
        raise BrokerUrlError(f"broker {url!r}: {exc}") from None
    return parsed.hostname, port


@dataclass
class Outgoing:
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
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._will = will
        self._on_connect = on_connect
        self._outbox: collections.deque[Outgoing] = collections.deque()
        self._outbox_limit = outbox_limit
        self._unacked: set[asyncio.Future[None]] = set()
        self._inflight_limit = inflight
        self._extra: list[tuple[str, MessageHandler]] = []
        self._extra_mids: set[int] = set()
        self._waiting: dict[int, Outgoing] = {}
        self._paho: mqtt.Client | None = None
        self._flush_scheduled = False
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
        self._outbox.append(Outgoing(topic, payload, qos, retain, done))
        self._unacked.add(done)
        done.add_done_callback(self._unacked.discard)
        self._pump()
        return done

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued message is acknowledged; False if the time ran out."""
        pending = set(self._unacked)
        if not pending:
            return True
        _done, not_done = await asyncio.wait(pending, timeout=timeout)
        return not not_done

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- extra subscriptions --------------------------------------------------------------------
    def add_subscription(self, topic_filter: str, callback: MessageHandler) -> None:
        """Deliver messages matching `topic_filter` to `callback(topic, payload)` instead of the
        router, on this same connection (subscribed now if connected, and after every
        reconnect). For parts with their own wire format on their own topics, e.g. dial frames."""
        self._extra.append((topic_filter, callback))
        if self._paho is not None and self._connected.is_set():
            self._subscribe_extra(self._paho, topic_filter, callback)

    def _subscribe_extra(
        self, paho: mqtt.Client, topic_filter: str, callback: MessageHandler
    ) -> None:
        def deliver(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            self.stats.received += 1
            try:
                callback(message.topic, bytes(message.payload))
            except Exception:  # a part's bug must not break the connection's read loop
                log.exception("subscription %s: callback failed on %s", topic_filter, message.topic)

        paho.message_callback_add(topic_filter, deliver)
        _rc, mid = paho.subscribe(topic_filter, qos=1)
        if mid is not None:
            self._extra_mids.add(mid)

    # -- the fast path ---------------------------------------------------------------------------
    # aiomqtt costs, per QoS 1 publish, an asyncio.Event, a wait_for task, a thread-safe wake-up
    # of the loop and two extra loop iterations before the bytes leave (measured: ~2.4x the bare
    # paho round trip). On a Pi that is the difference that matters, so the spine keeps aiomqtt
    # for connecting, subscribing and the disconnect signal, and talks to its paho client directly
    # for the hot path: messages are routed inside paho's read callback, and publishes are written
    # out at the end of the same loop iteration. All of it runs on the event loop's thread.
    def _attach(self, client: aiomqtt.Client) -> mqtt.Client:
        paho = getattr(client, "_client", None)
        if not isinstance(paho, mqtt.Client):
            raise RuntimeError("aiomqtt internals changed: pin aiomqtt==2.5.1 (see pyproject.toml)")
        aiomqtt_on_publish = paho.on_publish

        def on_publish(
            c: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: Properties
        ) -> None:
            if aiomqtt_on_publish is not None:
                aiomqtt_on_publish(c, userdata, mid, rc, props)  # type: ignore[call-arg]
            item = self._waiting.pop(mid, None)
            if item is not None:
                self.stats.published += 1
                if not item.done.done():
                    item.done.set_result(None)
                self._pump()

        def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            self.stats.received += 1
            self._on_message(message.topic, bytes(message.payload))

        aiomqtt_on_subscribe = paho.on_subscribe

        def on_subscribe(
            c: mqtt.Client, userdata: object, mid: int, codes: object, props: object
        ) -> None:
            # Our own extra subscriptions are not aiomqtt's; it would log their acks as errors.
            if mid in self._extra_mids:
                self._extra_mids.discard(mid)
            elif aiomqtt_on_subscribe is not None:
                aiomqtt_on_subscribe(c, userdata, mid, codes, props)  # type: ignore[call-arg, arg-type]

        aiomqtt_register_write = paho.on_socket_register_write
        loop = asyncio.get_running_loop()

        def on_socket_register_write(c: mqtt.Client, userdata: object, sock: Any) -> None:
            # aiomqtt adds its writer later (call_soon_threadsafe: paho may call this from the
            # connect thread) but removes it at once. When the spine's own flush drains paho's
            # queue in between, the late add_writer leaves a writer on an always-writable
            # socket that nothing removes, and the event loop spins at 100% CPU (seen in
            # rehearsals). Right after that late add (call_soon runs in order), drop the writer
            # again if paho has nothing left to write.
            if aiomqtt_register_write is not None:
                aiomqtt_register_write(c, userdata, sock)
            fd = sock.fileno()

            def drop_if_idle() -> None:
                if not c.want_write():
                    loop.remove_writer(fd)

            loop.call_soon_threadsafe(drop_if_idle)

        paho.on_publish = on_publish
        paho.on_message = on_message
        paho.on_subscribe = on_subscribe
        paho.on_socket_register_write = on_socket_register_write
        return paho

    def _pump(self) -> None:
        """Hand queued messages to paho while the in-flight window has room."""
        paho = self._paho
        if paho is None:
            return
        while self._outbox and len(self._waiting) < self._inflight_limit:
            item = self._outbox.popleft()
            if item.done.done():
                continue  # cancelled by its publisher
            info = paho.publish(item.topic, item.payload, item.qos, item.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._outbox.appendleft(item)
                break
            if item.qos == 0:
                self.stats.published += 1
                item.done.set_result(None)
            else:
                self._waiting[info.mid] = item
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        self._flush_scheduled = False
        paho = self._paho
        if paho is not None and paho.want_write():
            try:
                paho.loop_write()
            except OSError:
                pass  # the connection broke; aiomqtt's reader notices and we reconnect

    def _requeue_in_flight(self) -> None:
        """Messages sent but not acknowledged when the connection died go out again first."""
        unacked = list(self._waiting.values())
        self._waiting.clear()
        self._outbox.extendleft(reversed(unacked))

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = 0.25
        first = True
        while True:
            will = None
            if self._will:
                will = aiomqtt.Will(self._will[0], self._will[1], qos=1, retain=True)
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self._client_id,
                will=will,
                keepalive=10,
                timeout=10,
                max_inflight_messages=64,
                # paho leaves Nagle's algorithm on: each small QoS 1 event would then wait for
                # the broker's delayed ACK (~40 ms on loopback, measured by `gibsey bench spine`).
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
            try:
                async with client:
                    paho = self._paho = self._attach(client)
                    self._connected.set()
                    self.stats.connects += 1
                    if not first or delay > 0.25:
                        log.warning("connected to broker %s", self.url)
                    else:
                        log.info("connected to broker %s", self.url)
                    delay = 0.25
                    for sub in self._subscriptions:
                        await client.subscribe(sub, qos=1)
                    for topic_filter, callback in self._extra:
                        self._subscribe_extra(paho, topic_filter, callback)
                    if self._on_connect:
                        self._on_connect()
                    try:
                        self._pump()
                        # Messages are handled in paho's read callback; here we only wait for
                        # the connection to end (shielded: cancelling the node must not cancel
                        # aiomqtt's own future, which its clean disconnect still reads).
                        await asyncio.shield(client._disconnected)
                    except Exception as exc:
                        raise aiomqtt.MqttError(f"connection lost: {exc}") from exc
                    finally:
                        self._paho = None
                        self._connected.clear()
                        self._requeue_in_flight()
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                self.stats.last_error = str(exc)
                verb = "not reachable" if first or self.stats.connects == 0 else "lost"
                log.warning(
                    "broker %s %s (%s); retrying in %.1fs",
                    self.url,
                    verb,
                    exc or "no answer",
                    delay,
                )
                first = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
