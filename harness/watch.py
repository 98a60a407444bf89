"""Watching one node over MQTT from outside: a paho client on the node's broker that turns a
virtual dial (frames exactly as a Pico W publishes them) and taps the node's events (counts per
kind, dial frame -> ritual latency, the ledger entries it announced).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.dialcore import frame as df
from gibsey.harness.waiting import GalleryError
from gibsey.node.dial.bridge import frame_topic


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
    """A paho client on a node's broker: publishes dial frames exactly as a Pico W does
    (hello, then R frames with sequence numbers and CRCs on .../dial/<id>/frame), and taps the
    node's events (counts per kind, dial frame -> ritual latency, acknowledged entries)."""

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
        self._acked: set[int] = set()
        self._mids: dict[int, int] = {}  # mid -> frame seq
        self.seq = 0
        self.position = 0
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"rehearse-{node_id}-{secrets.token_hex(3)}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise GalleryError(f"cannot connect to the broker of {node_id} at {host}:{port}")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        client.subscribe(f"gibsey/v1/{self.node_id}/+/+", qos=1)
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any = None, _p: Any = None) -> None:
        with self.lock:
            if mid in self._mids:
                self._mids.pop(mid)
                self.counts.frames_acked += 1

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        kind = "/".join(msg.topic.split("/")[3:5])
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        payload = event.get("payload") or {}
        with self.lock:
            c = self.counts
            c.events += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if self.keep_events:
                self.events.append(event)
            if kind == "glyph/rotated":
                c.rotations += 1
            elif kind == "ritual/performed":
                if event.get("actor") == "dial" and self._sent:
                    self.latencies.append(now - self._sent.popleft())
                if str(payload.get("error", "")).startswith("throttled"):
                    c.throttled += 1
                else:
                    c.rituals += 1
            elif kind == "gift/txn":
                entry = payload.get("entry")
                if isinstance(entry, str) and len(entry) == 64:
                    self.entries.add(entry)
                if payload.get("type") == "mint":
                    c.mints += 1
                elif payload.get("type") == "gift":
                    c.gifts += 1
            elif kind == "agent/request":
                c.requests += 1
            elif kind == "agent/emit" and payload.get("final"):
                c.answers += 1
            elif kind == "narrative/change" and payload.get("change") == "merge":
                c.merges += 1
            elif kind == "ritual/rebirth":
                c.rebirths += 1
            elif kind == "safety/alert":
                c.alerts += 1

    def _publish_frame(self, line: str, rotate: bool) -> None:
        with self.lock:
            if rotate:
                self._sent.append(time.perf_counter())
            info = self.client.publish(self.topic, line, qos=1)
            self.counts.frames += 1
            self._mids[info.mid] = self.seq

    def hello(self, symbol: int = 0, rotation: int = 0) -> None:
        """The board's boot hello: resets the bridge's sequence tracking for this dial."""
        self.seq = 0
        self._publish_frame(
            df.hello(self.seq, self.dial_id, "rehearsal", symbol, rotation, True), False
        )
        self.seq += 1

    def turn(self, symbol: int, rotation: int) -> None:
        """One detent: an R frame, as the firmware sends it."""
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
        with self.lock:
            return not self._mids

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()
