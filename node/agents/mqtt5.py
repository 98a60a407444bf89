"""The agents' MQTT 5 side connection: response topic and correlation data of `agent/request`.

The spine speaks MQTT 3.1.1 on purpose (on MQTT 5 paho parses properties on every message,
measured as ~20% of the spine's throughput), so MQTT 5 properties never reach the router. This
small second connection, owned by the AgentService, subscribes with MQTT 5 to this node's
`agent/request` topic only and remembers, by the event id in each request's envelope, the
message's ResponseTopic and CorrelationData (a bounded table). It dispatches nothing: the router
still hands every request to the service as before. When the service answers, it looks the
request up here (`route`) and, if it named a response topic, publishes each emit there through
this connection with the correlation data copied unchanged (`publish`).

A broker without MQTT 5 (the embedded amqtt broker) refuses the connect: that is logged once,
the link stays off (retried once a minute), and the service answers on `reply_to` as before,
never waiting for a copy while the link is down.

paho runs this connection's network loop in its own thread (loop_start); what arrives is handed
to the event loop with call_soon_threadsafe, and paho's publish is safe to call from the event
loop's thread (it queues the packet and wakes paho's thread).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("gibsey.agents")

UNSUPPORTED_PROTOCOL = 132  # CONNACK reason code 0x84, "Unsupported Protocol Version"
RETRY_MIN = 1  # s: after losing a broker that spoke MQTT 5 (doubling up to RETRY_MAX)
RETRY_MAX = 60  # s: and always, once the broker said it has no MQTT 5
ROUTES_KEPT = 1024  # copies remembered for requests not answered yet


@dataclass(frozen=True)
class Route:
    """What the MQTT 5 copy of a request carried (None where a property was absent)."""

    topic: str | None
    correlation: bytes | None


class ResponseLink:
    def __init__(
        self, host: str, port: int, client_id: str, topic: str, keep: int = ROUTES_KEPT
    ) -> None:
        self.host, self.port = host, port
        self.url = f"mqtt://{host}:{port}"
        self.topic = topic
        self._client_id = client_id
        self._keep = keep
        self._loop = asyncio.get_running_loop()
        self._routes: collections.OrderedDict[str, Route] = collections.OrderedDict()
        self._waiters: dict[str, asyncio.Future[Route | None]] = {}
        self._client: mqtt.Client | None = None
        self._up = False
        self.unsupported = False  # the broker refused MQTT 5 (set from paho's thread)
        self.copies = 0

    @property
    def up(self) -> bool:
        """Connected and subscribed: copies of requests arrive (read on the event loop)."""
        return self._up

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5
        )
        client.reconnect_delay_set(RETRY_MIN, RETRY_MAX)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(self.host, self.port, keepalive=30, clean_start=True)
        client.loop_start()
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        self._set_up(False)
        if client is not None:

            def stop() -> None:
                client.disconnect()
                client.loop_stop()  # paho's thread sleeps in steps of at most 1 s

            await asyncio.to_thread(stop)

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
        client = self._client
        if client is None or not self._up:
            return False
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        client.publish(topic, payload, qos, properties=props)
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

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: the node stopped
            self._loop.call_soon_threadsafe(fn, *args)

    # -- paho's thread ----------------------------------------------------------------------------
    def _on_connect(
        self, c: mqtt.Client, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        if reason.is_failure:
            if reason.value == UNSUPPORTED_PROTOCOL:
                if not self.unsupported:
                    log.warning(
                        "MQTT 5 not supported by the broker: answering on reply_to only (%s)",
                        self.url,
                    )
                self.unsupported = True
                c.reconnect_delay_set(RETRY_MAX, RETRY_MAX)  # the broker will not change soon
            else:
                log.warning("MQTT 5 link to %s refused: %s", self.url, reason)
            return
        if self.unsupported:
            log.warning("MQTT 5 link to %s: the broker speaks MQTT 5 now", self.url)
        self.unsupported = False
        c.reconnect_delay_set(RETRY_MIN, RETRY_MAX)
        sock = c.socket()
        if isinstance(sock, socket.socket):
            # paho leaves Nagle's algorithm on: each token would wait for a delayed ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, c: mqtt.Client, userdata: object, mid: int, codes: Any, props: object
    ) -> None:
        if any(code.is_failure for code in codes):
            log.warning("MQTT 5 link: %s refused the subscription to %s", self.url, self.topic)
            return
        log.info("MQTT 5 link to %s up: response topics answered", self.url)
        self._call(self._set_up, True)

    def _on_disconnect(
        self, c: mqtt.Client, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        self._call(self._set_up, False)

    def _on_message(self, c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            event_id = json.loads(message.payload).get("id")
        except (ValueError, AttributeError):
            return  # not an envelope: the router rejects (and reports) it
        if not isinstance(event_id, str) or not event_id or len(event_id) > 256:
            return
        props = getattr(message, "properties", None)
        topic = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        route = Route(
            topic if isinstance(topic, str) else None,
            bytes(corr) if isinstance(corr, bytes | bytearray) else None,
        )
        self._call(self._arrived, event_id, route)
