"""The agents' MQTT 5 side connection: response topic and correlation data of `agent/request`.

The spine speaks MQTT 3.1.1 on purpose (on MQTT 5 paho parses properties on every message,
measured as ~20% of the spine's throughput), so MQTT 5 properties never reach the router. This
small second connection, owned by the AgentService, subscribes with MQTT 5 to this node's
`agent/request` topic only and remembers, by the event id in each request's envelope, the
message's ResponseTopic and CorrelationData (a bounded table). It dispatches nothing: the router
still hands every request to the service as before. When the service answers, it looks the
request up here (`route`) and, if it named a response topic, publishes each emit there through
this connection with the correlation data copied unchanged (`publish`).

It logs in as the node (the spine's URL, with the node's user and password when it names them):
it reads what the node's user reads and publishes only on the response topics requests name,
which the image's broker lets the node's user write under gibsey/reply/# (a response topic
elsewhere is dropped by the broker; dashboards read gibsey/reply/#). The agents' workers have no
network at all (gibsey-agent-worker@.service, PrivateNetwork=yes): this link is the daemon's.

A broker without MQTT 5 (the embedded amqtt broker) refuses the connect: that is logged once,
the link stays off (retried once a minute), and the service answers on `reply_to` as before,
never waiting for a copy while the link is down.

The connection is core/mqtt.py's, driven by the event loop: what arrives is handled on the loop's
thread, and publishing needs no hand-over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gibsey.core.mqtt import (
    ClientSettings,
    Connection,
    ConnectRefused,
    MqttError,
    parse_broker_url,
    redact_url,
)

log = logging.getLogger("gibsey.agents")

UNSUPPORTED_PROTOCOL = 132  # CONNACK reason code 0x84, "Unsupported Protocol Version"
RETRY_MIN = 1  # s: after losing a broker that spoke MQTT 5 (doubling up to RETRY_MAX)
RETRY_MAX = 60  # s: and always, once the broker said it has no MQTT 5
KEEPALIVE_S = 30
ROUTES_KEPT = 1024  # copies remembered for requests not answered yet


@dataclass(frozen=True)
class Route:
    """What the MQTT 5 copy of a request carried (None where a property was absent)."""

    topic: str | None
    correlation: bytes | None


class ResponseLink:
    def __init__(self, url: str, client_id: str, topic: str, keep: int = ROUTES_KEPT) -> None:
        """`url`: the broker's, with the credentials to log in with (never shown: self.url)."""
        self.host, self.port = parse_broker_url(url)
        self.url = redact_url(url)
        self.topic = topic
        self._settings = ClientSettings(url, client_id, keepalive_s=KEEPALIVE_S, mqtt5=True)
        self._keep = keep
        self._loop = asyncio.get_running_loop()
        self._routes: collections.OrderedDict[str, Route] = collections.OrderedDict()
        self._waiters: dict[str, asyncio.Future[Route | None]] = {}
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = False
        self.unsupported = False  # the broker refused MQTT 5
        self.copies = 0

    @property
    def up(self) -> bool:
        """Connected and subscribed: copies of requests arrive."""
        return self._up

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="agents-mqtt5")

    async def close(self) -> None:
        task, self._task = self._task, None
        self._set_up(False)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """Stay connected until cancelled: retry after RETRY_MIN s doubling up to RETRY_MAX,
        and every RETRY_MAX s while the broker has no MQTT 5."""
        delay = RETRY_MIN
        while True:
            conn = Connection(self._settings)
            conn.client.on_message = self._on_message
            try:
                await conn.connect()
            except ConnectRefused as exc:
                delay = self._refused(exc, delay)
            except MqttError:
                pass
            else:
                self._now_supported()
                delay = RETRY_MIN
                await self._serve(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _refused(self, exc: ConnectRefused, delay_s: int) -> int:
        """The next retry's delay after the broker refused the connect."""
        if exc.reason_code != UNSUPPORTED_PROTOCOL:
            log.warning("MQTT 5 link to %s refused: %s", self.url, exc)
            return delay_s
        if not self.unsupported:
            log.warning(
                "MQTT 5 not supported by the broker: answering on reply_to only (%s)", self.url
            )
        self.unsupported = True
        return RETRY_MAX  # the broker will not change soon

    def _now_supported(self) -> None:
        if self.unsupported:
            log.warning("MQTT 5 link to %s: the broker speaks MQTT 5 now", self.url)
        self.unsupported = False

    async def _serve(self, conn: Connection) -> None:
        """Subscribe to the requests, then stay up until the connection ends."""
        self._conn = conn
        try:
            try:
                await conn.subscribe(self.topic, qos=1)
            except MqttError:
                if not conn.closed.done():
                    log.warning(
                        "MQTT 5 link: %s refused the subscription to %s", self.url, self.topic
                    )
            else:
                log.info("MQTT 5 link to %s up: response topics answered", self.url)
                self._set_up(True)
            await conn.wait_closed()
        finally:
            self._conn = None
            self._set_up(False)
            await conn.close()

    # -- the event loop's side ------------------------------------------------------------------
    async def route(self, event_id: str, wait: float) -> Route | None:
        """The MQTT 5 copy of request `event_id`: at once if it arrived, else awaited for up to
        `wait` s, but only while the link is up (never a wait when it is off)."""
        route = self._routes.pop(event_id, None)
        if route is not None or not self._up or wait <= 0:
            return route
        fut = self._waiters.get(event_id)
        if fut is None:
            fut = self._waiters[event_id] = self._loop.create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            log.debug("no MQTT 5 copy of request %s within %.1f s", event_id, wait)
            return None
        finally:
            self._waiters.pop(event_id, None)

    def publish(self, topic: str, payload: bytes, qos: int, correlation: bytes | None) -> bool:
        """Publish with CorrelationData; False when the link is down (the caller falls back)."""
        conn = self._conn
        if conn is None or not self._up:
            return False
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        conn.client.publish(topic, payload, qos, properties=props)
        return True

    def _arrived(self, event_id: str, route: Route) -> None:
        self.copies += 1
        fut = self._waiters.get(event_id)
        if fut is not None:
            if not fut.done():
                fut.set_result(route)
            return
        self._routes[event_id] = route
        self._routes.move_to_end(event_id)
        while len(self._routes) > self._keep:
            self._routes.popitem(last=False)

    def _set_up(self, up: bool) -> None:
        self._up = up
        if not up:
            for fut in self._waiters.values():  # nothing more will arrive: stop waiting now
                if not fut.done():
                    fut.set_result(None)

    def _on_message(self, c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            event_id = json.loads(message.payload).get("id")
        except (ValueError, AttributeError):
            return  # not an envelope: the router rejects (and reports) it
        if not isinstance(event_id, str) or not event_id or len(event_id) > 256:
            return
        props = message.properties
        topic = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        route = Route(
            topic if isinstance(topic, str) else None,
            bytes(corr) if isinstance(corr, bytes | bytearray) else None,
        )
        self._arrived(event_id, route)
