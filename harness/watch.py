"""Watching one node over MQTT from outside: a client on the node's broker that turns a virtual
dial (frames exactly as a Pico W publishes them) and taps the node's events (counts per kind,
dial frame -> ritual latency, the ledger entries it announced).

The connection is core/mqtt.py's (`Connection`, TCP_NODELAY on, as the node's own), driven by an
asyncio loop that each `NodeClient` runs in a daemon thread of its own (loopthread.py): paho's
callbacks, and so the tap, run on that thread. The callers are synchronous (a visitor's thread,
the live view, a test body): a dial frame is handed to the loop thread (`call_soon`), and
everything both sides touch (counts, latencies, entries) is guarded by `lock`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gibsey.core.mqtt import ClientSettings, Connection, MqttError, new_client_id
from gibsey.dialcore import frame as df
from gibsey.harness.loopthread import LoopThread
from gibsey.harness.waiting import GalleryError
from gibsey.node.dial.bridge import frame_topic

log = logging.getLogger("gibsey.harness.watch")

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0  # TCP connect, CONNACK and SUBACK
CLOSE_TIMEOUT_S = 2.0


@dataclass
class Counts:
    frames: int = 0
    frames_acked: int = 0
    rotations: int = 0
    rituals: int = 0
    throttled: int = 0
    mints: int = 0
    gifts: int = 0
    answers: int = 0
    requests: int = 0
    merges: int = 0
    rebirths: int = 0
    alerts: int = 0
    events: int = 0


class NodeClient:
    """A client on a node's broker: publishes dial frames exactly as a Pico W does (hello, then
    R frames with sequence numbers and CRCs on .../dial/<id>/frame), and taps the node's events
    (counts per kind, dial frame -> ritual latency, acknowledged entries). Connected and
    subscribed once made (GalleryError if it cannot be); `close()` when done."""

    def __init__(
        self, node_id: str, port: int, dial_id: str = "rehearsal", host: str = "127.0.0.1"
    ) -> None:
        self.node_id = node_id
        self.dial_id = dial_id
        self.topic = frame_topic(node_id, dial_id)
        self.counts = Counts()
        self.lock = threading.Lock()
        self.latencies: deque[float] = deque(maxlen=100_000)
        self._sent: deque[float] = deque()  # publish times of R frames awaiting their ritual
        self.entries: set[str] = set()  # ledger entry hashes the node announced (gift/txn)
        self.kinds: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []  # kept only when keep_events
        self.keep_events = False
        self.seq = 0
        self.position = 0
        self._closed = False
        self._loop = LoopThread(f"watch-{node_id}")
        settings = ClientSettings(
            f"mqtt://{host}:{port}", new_client_id(f"rehearse-{node_id}"), keepalive_s=KEEPALIVE_S
        )
        try:
            self._conn = self._loop.run(self._connect(settings), CONNECT_TIMEOUT_S)
        except (MqttError, TimeoutError) as exc:
            self._loop.stop()
            why = str(exc) or "no answer"
            raise GalleryError(
                f"cannot connect to the broker of {node_id} at {host}:{port}: {why}"
            ) from exc

    async def _connect(self, settings: ClientSettings) -> Connection:
        """On the loop: connect and subscribe to the node's events (every event of this node,
        so that no frame's ritual can arrive before the subscription)."""
        conn = Connection(settings)
        conn.client.on_message = self._on_message
        conn.client.on_publish = self._on_publish
        await conn.connect()
        try:
            await conn.subscribe(f"gibsey/v1/{self.node_id}/+/+", qos=1)
        except BaseException:
            conn.abort("not subscribed")
            raise
        return conn

    # -- the loop's thread: paho's callbacks ----------------------------------------------------
    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        # Only dial frames are published here, each with QoS 1: one PUBACK each.
        with self.lock:
            self.counts.frames_acked += 1

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        kind = "/".join(msg.topic.split("/")[3:5])
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        payload = event.get("payload")
        if not isinstance(payload, dict):
            payload = {}  # a handler that raised would drop the connection (core/mqtt.py)
        with self.lock:
            if kind == "node/status":
                # A refused turn gets no reply (issue 16): the node's own count, in its retained
                # status (turns and questions over a flood bound, since that run's start).
                self.counts.throttled = _int(event.get("throttled"))
            self.counts.events += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if self.keep_events:
                self.events.append(event)
            _tally(self.counts, kind, payload)
            if kind == "ritual/performed" and event.get("actor") == "dial" and self._sent:
                self.latencies.append(now - self._sent.popleft())
            elif kind == "gift/txn":
                entry = payload.get("entry")
                if isinstance(entry, str) and len(entry) == 64:
                    self.entries.add(entry)

    def _send(self, line: str) -> None:
        info = self._conn.client.publish(self.topic, line, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:  # never acknowledged: all_acked() stays False
            log.warning("%s: dial frame not sent: %s", self.node_id, mqtt.error_string(info.rc))

    # -- the caller's thread --------------------------------------------------------------------
    def _publish_frame(self, line: str, rotate: bool) -> None:
        """Hand one frame to the loop's thread; called with `lock` held, so that frames leave
        in the order of their sequence numbers whichever thread turns the dial."""
        if self._closed:
            return
        if rotate:
            self._sent.append(time.perf_counter())
        self.counts.frames += 1
        self._loop.call_soon(self._send, line)

    def hello(self, symbol: int = 0, rotation: int = 0) -> None:
        """The board's boot hello: resets the bridge's sequence tracking for this dial."""
        with self.lock:
            self.seq = 0
            line = df.hello(self.seq, self.dial_id, "rehearsal", symbol, rotation, True)
            self._publish_frame(line, False)
            self.seq += 1

    def turn(self, symbol: int, rotation: int) -> None:
        """One detent: an R frame, as the firmware sends it."""
        with self.lock:
            self.position += 1
            self._publish_frame(df.rotate(self.seq, symbol, rotation, self.position), True)
            self.seq += 1

    def reset_latency(self) -> None:
        """Forget unanswered frames (after a node restart, their rituals never come)."""
        with self.lock:
            self._sent.clear()

    def snapshot(self) -> Counts:
        with self.lock:
            return Counts(**self.counts.__dict__)

    def all_acked(self) -> bool:
        """Whether the broker acknowledged every frame published so far."""
        with self.lock:
            return self.counts.frames_acked == self.counts.frames

    def close(self) -> None:
        """Say goodbye to the broker and stop the loop's thread; frames turned after this go
        nowhere."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._loop.run(self._conn.close(CLOSE_TIMEOUT_S), CLOSE_TIMEOUT_S + 1)
        except (MqttError, TimeoutError) as exc:
            log.warning("%s: closing the watch: %s", self.node_id, exc)
        finally:
            self._loop.stop()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tally(counts: Counts, kind: str, payload: dict[str, Any]) -> None:
    """Add one event of `kind` to the per-kind figures (a bool adds 1 when the event counts)."""
    if kind == "glyph/rotated":
        counts.rotations += 1
    elif kind == "ritual/performed":
        counts.rituals += 1
    elif kind == "gift/txn":
        counts.mints += payload.get("type") == "mint"
        counts.gifts += payload.get("type") == "gift"
    elif kind == "agent/request":
        counts.requests += 1
    elif kind == "agent/emit":
        counts.answers += bool(payload.get("final"))
    elif kind == "narrative/change":
        counts.merges += payload.get("change") == "merge"
    elif kind == "ritual/rebirth":
        counts.rebirths += 1
    elif kind == "safety/alert":
        counts.alerts += 1
