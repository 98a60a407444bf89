"""The dial bridge: frames from the glyph dial (USB serial, or MQTT from a Pico W) -> events.

A part of the daemon (`attach(node)`, listed in parts.py). It

* finds the board on USB serial (a Raspberry Pi Pico, USB vendor id 0x2e8a, or the path set in
  `[dial] serial = "/dev/..."`), reads its frame lines, and when the port vanishes (unplugged,
  the board reset) goes back to looking for it: an unplug and replug is survived;
* takes the same frames from MQTT, one per message on `gibsey/v1/<node>/dial/<dial_id>/frame`,
  which is where a Pico W on Wi-Fi and `gibsey dial` (the virtual dial) publish them;
* decodes each frame with the firmware's own decoder (`gibsey.dialcore` is `firmware/gdial`),
  tracks the sequence numbers of each connection, and turns a rotation into a `glyph/rotated`
  event and a press into `dial/pressed`;
* counts lost (sequence gaps), stale (out of order, dropped), corrupt (checksum), truncated and
  malformed frames, and reports them as `safety/alert`s, coalesced to one per reason per
  `alert_interval` seconds so a noisy cable cannot flood the spine;
* keeps at most `[dial] max_dials` dial ids: a frame of a new id beyond them is refused before
  anything is made for it (no channel, view, state or discovery), counted (`refused`) and said
  in one log line and alert per `alert_interval` with the count; a dial silent for
  `forget_after` seconds gives its place to a new id, and its retained state and Home Assistant
  device config are cleared (`forgotten`);
* keeps a retained state document per dial on `gibsey/v1/<node>/dial/<dial_id>/state` and sends
  each turn and press to `.../dial/<dial_id>/event`, announced to Home Assistant by MQTT discovery
  as an `event` entity and position sensors. These topics have six levels, so the router's
  `gibsey/v1/+/+/+` subscription never mistakes them for events.

Its configuration is the `[dial]` section (config.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gibsey.core import trace
from gibsey.core.envelope import DialPressed, GlyphRotated, SafetyAlert
from gibsey.core.topics import TOPIC_ROOT
from gibsey.dialcore import frame as df
from gibsey.dialcore.qdpi import CHARACTERS, ROTATIONS, symbol_name
from gibsey.node.dial.config import DialConfig
from gibsey.node.spine.discovery import (
    DiscoveryMessage,
    availability_config,
    component,
    device_config,
    device_messages,
)
from gibsey.node.spine.drops import DropAlerts

if TYPE_CHECKING:
    import serial

    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.dial")

DIAL_ID = re.compile(r"^[a-z0-9_-]{1,32}$")
ALERT_REASONS = {
    "lost": "dial_frames_lost",
    "stale": "dial_frames_out_of_order",
    "corrupt": "dial_frames_corrupt",
    "truncated": "dial_frames_truncated",
    "malformed": "dial_frames_malformed",
}
REFUSED = "dial_ids_refused"  # the reason of the alert that counts refused frames of new ids


def frame_topic(node_id: str, dial_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/{dial_id}/frame"


def frame_subscription(node_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/+/frame"


def state_topic(node_id: str, dial_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/{dial_id}/state"


def event_topic(node_id: str, dial_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/{dial_id}/event"


@dataclass
class DialStats:
    frames: int = 0
    rotations: int = 0
    presses: int = 0
    hellos: int = 0
    lost: int = 0
    stale: int = 0
    corrupt: int = 0
    truncated: int = 0
    malformed: int = 0
    noise: int = 0
    serial_opens: int = 0
    serial_disconnects: int = 0
    bytes_in: int = 0
    refused: int = 0  # frames of a new dial id beyond max_dials, dropped
    forgotten: int = 0  # dials silent for forget_after whose place went to a new id


@dataclass
class FrameChannel:
    """One connection a dial's frames arrive on: a serial port, or one dial's MQTT topic."""

    name: str
    transport: str
    dial_id: str
    tracker: df.SeqTracker = field(default_factory=df.SeqTracker)
    splitter: df.LineSplitter = field(default_factory=df.LineSplitter)


@dataclass
class DialView:
    dial_id: str
    transport: str = ""
    firmware: str = ""
    symbol: int = 0
    rotation: int = 0
    position: int = 0
    last_seen: float = 0.0
    frames: int = 0


class DialBridge:
    def __init__(self, node: Node, config: DialConfig) -> None:
        self.node = node
        self.config = config
        self.stats = DialStats()
        self.dials: dict[str, DialView] = {}
        self.serial_port: str | None = None
        self._announced: set[str] = set()
        self._pending: collections.Counter[str] = collections.Counter()
        self._pending_detail: dict[str, str] = {}
        self._last_alert: dict[str, float] = {}
        self._connects_seen = -1
        self.serial_connected = asyncio.Event()
        self.serial_gone = asyncio.Event()
        self._mqtt_channels: dict[str, FrameChannel] = {}
        # The dial ids taken, least recently heard first (monotonic seconds): the bound, and
        # who is forgotten for a new id. A wall clock would jump at the Pi's first NTP sync.
        self._heard: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._refused_alerts = DropAlerts(config.alert_interval, time.monotonic())
        self._last_refused = ""

    # -- frames in ---------------------------------------------------------------------------
    def feed_bytes(self, channel: FrameChannel, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        before = channel.splitter.overlong
        for line in channel.splitter.feed(data):
            self.feed_line(channel, line)
        if channel.splitter.overlong != before:
            self._anomaly("truncated", channel.splitter.overlong - before, channel, "overlong")

    def feed_line(self, channel: FrameChannel, line: str) -> None:
        """One frame line from a channel: decode, check its sequence, emit its event."""
        try:
            fr = df.decode(line)
        except df.FrameError as exc:
            reason = df.REASONS[exc.reason]
            if reason == "noise":
                self.stats.noise += 1
            else:
                self._anomaly(reason, 1, channel, exc.detail)
            return
        gap = channel.tracker.accept(fr.seq, fr.kind == df.HELLO and fr.boot)
        if gap < 0:
            self._anomaly("stale", 1, channel, f"seq {fr.seq} arrived after a later frame")
            return
        if gap > 0:
            self._anomaly("lost", gap, channel, f"gap before seq {fr.seq}")
        self.stats.frames += 1
        if fr.kind == df.HELLO:
            if fr.dial_id and DIAL_ID.match(fr.dial_id) and channel.transport == "serial":
                channel.dial_id = fr.dial_id
            self.stats.hellos += 1
        view = self._view(channel)
        if view is None:
            return
        view.frames += 1
        view.last_seen = time.time()
        view.symbol, view.rotation = fr.symbol, fr.rotation
        if fr.kind == df.HELLO:
            view.firmware = fr.firmware
        elif fr.kind == df.ROTATE:
            self.stats.rotations += 1
            view.position = fr.position
            self._rotated(channel, fr.symbol, fr.rotation, fr.seq)
            self._event(view, "rotated")
        elif fr.kind == df.PRESS:
            self.stats.presses += 1
            self.node.emit(
                "dial/pressed",
                DialPressed(
                    symbol=fr.symbol,
                    rotation=fr.rotation,
                    press="long" if fr.long else "short",
                    source=channel.dial_id,
                ),
                actor="dial",
            )
            self._event(view, "long_pressed" if fr.long else "pressed")
        self._publish_state(view)

    def _rotated(self, channel: FrameChannel, symbol: int, rotation: int, seq: int) -> None:
        """The turn's event, sent and handled at once: the ritual runs now, not after a broker
        round trip (the visitor is waiting). With tracing on, the turn's trace begins here and
        the glyph/rotated envelope carries it (core/trace.py)."""
        rotated = GlyphRotated(symbol=symbol, rotation=rotation, source=channel.dial_id)
        if not trace.enabled():
            self.node.send("glyph/rotated", rotated, actor="dial", handle_now=True)
            return
        attributes: dict[str, str | int] = {
            "gibsey.node": self.node.node_id,
            "gibsey.dial": channel.name,
            "gibsey.seq": seq,
        }
        with trace.span("dial frame", None, attributes):
            self.node.send("glyph/rotated", rotated, actor="dial", handle_now=True)

    def _view(self, channel: FrameChannel) -> DialView | None:
        """The channel's dial, made and announced at its first frame; None: refused (a serial
        board's hello naming a new id beyond max_dials; MQTT's are refused before this)."""
        if not self._admit(channel.dial_id):
            return None
        view = self.dials.get(channel.dial_id)
        if view is None:
            view = self.dials[channel.dial_id] = DialView(channel.dial_id)
        view.transport = channel.transport
        if channel.dial_id not in self._announced:
            self._announce(channel.dial_id)
        return view

    # -- the bound on dial ids ---------------------------------------------------------------
    def _admit(self, dial_id: str) -> bool:
        """Whether a frame of `dial_id` is taken (and it heard now): a known dial's always, a new
        one's while fewer than max_dials are known or one of them has gone quiet."""
        now = time.monotonic()
        if dial_id in self._heard:
            self._heard[dial_id] = now
            self._heard.move_to_end(dial_id)
            return True
        if len(self._heard) >= self.config.max_dials and not self._forget_quiet(now):
            # Counted only: said by housekeeping once per interval, never per frame.
            self.stats.refused += 1
            self._last_refused = dial_id
            return False
        self._heard[dial_id] = now
        return True

    def _forget_quiet(self, now: float) -> bool:
        """The least recently heard dial forgotten if silent for forget_after: whether it was."""
        dial_id, heard = next(iter(self._heard.items()))
        if not self.config.forget_after or now - heard < self.config.forget_after:
            return False
        self._forget(dial_id)
        return True

    def _forget(self, dial_id: str) -> None:
        """Everything the node keeps of a dial dropped; its retained state and Home Assistant
        device config cleared (an empty retained payload: Home Assistant removes the device)."""
        del self._heard[dial_id]
        self._mqtt_channels.pop(dial_id, None)
        self._announced.discard(dial_id)
        self.stats.forgotten += 1
        if self.dials.pop(dial_id, None) is None or self.node.spine is None:
            return  # no valid frame ever came: nothing was published for it
        log.info(
            "dial: %s silent for %.0fs, forgotten for a new dial", dial_id, self.config.forget_after
        )
        self.node.spine.publish(state_topic(self.node.node_id, dial_id), b"", retain=True)
        prefix = self.node.config.node.discovery_prefix
        if not prefix:
            return
        for msg in dial_discovery_messages(self.node.node_id, dial_id, prefix):
            if msg.retain and msg.payload:  # the device config (the legacy topics are clear)
                self.node.spine.publish(msg.topic, b"", retain=True)

    def say_refused(self, now: float | None = None) -> None:
        """One log line and alert with the count of refused frames, at most per alert_interval
        (and per housekeeping tick): a flood of made-up ids must not become a flood of alerts."""
        now = time.monotonic() if now is None else now
        for due in self._refused_alerts.due({REFUSED: self.stats.refused}, now):
            detail = (
                f"{due.dropped} frame(s) of new dial ids refused in the last {due.since_s:.0f}s "
                f"({due.total} in all): {len(self._heard)} dials known, [dial] max_dials = "
                f"{self.config.max_dials}; last: {self._last_refused}"
            )
            log.warning("dial: %s", detail)
            if self.node.spine is not None:
                self.node.alert(SafetyAlert(reason=REFUSED, detail=detail, topic=None))

    # -- reporting ---------------------------------------------------------------------------
    def _anomaly(self, kind: str, n: int, channel: FrameChannel, detail: str) -> None:
        setattr(self.stats, kind, getattr(self.stats, kind) + n)
        self._pending[kind] += n
        self._pending_detail[kind] = f"{channel.name}: {detail}"
        self.flush_alerts()

    def flush_alerts(self, now: float | None = None) -> None:
        """Send what is pending, at most one alert per reason per alert_interval."""
        now = time.monotonic() if now is None else now
        for kind, n in list(self._pending.items()):
            if n <= 0 or now - self._last_alert.get(kind, -1e9) < self.config.alert_interval:
                continue
            self._last_alert[kind] = now
            del self._pending[kind]
            total = getattr(self.stats, kind)
            detail = (
                f"{n} frame(s) {kind} since the last report ({total} in all); "
                f"last: {self._pending_detail.pop(kind, '')}"
            )
            log.warning("dial: %s", detail)
            if self.node.spine is not None:
                self.node.alert(
                    SafetyAlert(reason=ALERT_REASONS[kind], detail=detail[:16_000], topic=None)
                )

    def _info(self, reason: str, detail: str) -> None:
        log.info("dial: %s", detail)
        if self.node.spine is not None:
            self.node.alert(SafetyAlert(reason=reason, detail=detail, severity="info"))

    def state_doc(self, view: DialView) -> dict[str, Any]:
        colour = CHARACTERS[view.symbol][1] if view.symbol < len(CHARACTERS) else ""
        return {
            **asdict(view),
            "state": view.symbol * 4 + view.rotation,
            "glyph": symbol_name(view.symbol),
            "colour": colour,
            "rotation_name": ROTATIONS[view.rotation],
            "stats": asdict(self.stats),
        }

    def _publish_state(self, view: DialView) -> None:
        if self.node.spine is None:
            return
        doc = json.dumps(self.state_doc(view), separators=(",", ":")).encode()
        self.node.spine.publish(state_topic(self.node.node_id, view.dial_id), doc, retain=True)

    def _event(self, view: DialView, kind: str) -> None:
        if self.node.spine is None:
            return
        doc = {
            "event_type": kind,
            "symbol": view.symbol,
            "rotation": view.rotation,
            "state": view.symbol * 4 + view.rotation,
            "glyph": symbol_name(view.symbol),
            "rotation_name": ROTATIONS[view.rotation],
        }
        self.node.spine.publish(
            event_topic(self.node.node_id, view.dial_id), json.dumps(doc).encode(), qos=0
        )

    def _announce(self, dial_id: str) -> None:
        prefix = self.node.config.node.discovery_prefix
        if not prefix or self.node.spine is None:
            return
        self._announced.add(dial_id)
        for msg in dial_discovery_messages(self.node.node_id, dial_id, prefix):
            self.node.spine.publish(msg.topic, msg.payload, retain=msg.retain)

    def announce_all(self) -> None:
        """Every known dial announced to Home Assistant again (after a reconnect, or when Home
        Assistant says it is back: node.daemon hears its birth message)."""
        self._announced.clear()
        for dial_id in self.dials:
            self._announce(dial_id)

    # -- services ----------------------------------------------------------------------------
    async def housekeeping(self) -> None:
        """Coalesced alerts go out; after a broker reconnect the dials are announced again."""
        while True:
            await asyncio.sleep(1.0)
            self.flush_alerts()
            self.say_refused()
            spine = self.node.spine
            if spine is not None and spine.stats.connects != self._connects_seen:
                if self._connects_seen >= 0:
                    self.announce_all()
                self._connects_seen = spine.stats.connects

    def find_port(self) -> str | None:
        setting = self.config.serial
        if setting in ("", "off", "none"):
            return None
        if setting != "auto":
            return setting if os.path.exists(setting) else None
        from serial.tools import list_ports

        for port in sorted(list_ports.comports(), key=lambda p: p.device):
            if port.vid == self.config.vid:
                return str(port.device)
        return None

    async def serial_loop(self) -> None:
        import serial

        while True:
            path = self.find_port()
            if path is None:
                await asyncio.sleep(self.config.scan_interval)
                continue
            try:
                port = serial.Serial(path, self.config.baud, timeout=0, exclusive=True)
            except (OSError, serial.SerialException) as exc:
                log.debug("dial: cannot open %s: %s", path, exc)
                await asyncio.sleep(self.config.scan_interval)
                continue
            try:
                await self._read_port(port, path)
            finally:
                with contextlib.suppress(Exception):
                    port.close()

    async def _read_port(self, port: serial.Serial, path: str) -> None:
        loop = asyncio.get_running_loop()
        channel = FrameChannel(name=path, transport="serial", dial_id="serial")
        gone = asyncio.Event()
        fd = port.fileno()

        def readable() -> None:
            data = read_ready(fd, 4096)
            if not data:
                gone.set()
                return
            self.feed_bytes(channel, data)

        self.stats.serial_opens += 1
        self.serial_port = path
        self.serial_gone.clear()
        self.serial_connected.set()
        self._info("dial_connected", f"dial board on {path}")
        loop.add_reader(fd, readable)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(fd)
            self.serial_port = None
            self.serial_connected.clear()
        if channel.splitter.reset():
            self._anomaly("truncated", 1, channel, "the port went away mid-frame")
        self.stats.serial_disconnects += 1
        self.serial_gone.set()
        self._info("dial_disconnected", f"dial board on {path} went away; looking for it again")

    def on_mqtt_frame(self, topic: str, payload: bytes) -> None:
        """Frames from MQTT (a Pico W, `gibsey dial`), on the node's own connection: the frame
        topic is a subscription of its own (Node.add_subscription), so these six-level topics
        never reach the router and no second connection is opened."""
        self._mqtt_frame(self._mqtt_channels, topic, payload)

    def _mqtt_frame(self, channels: dict[str, FrameChannel], topic: str, payload: bytes) -> None:
        dial_id = topic.split("/")[4]
        channel = channels.get(dial_id)
        if channel is None:
            if not DIAL_ID.match(dial_id):
                ch = FrameChannel(f"mqtt:{dial_id[:40]}", "mqtt", "invalid")
                self._anomaly("malformed", 1, ch, "bad dial id in topic")
                return
            if not self._admit(dial_id):
                return
            channel = channels[dial_id] = FrameChannel(f"mqtt:{dial_id}", "mqtt", dial_id)
        self.feed_line(channel, payload.decode("ascii", "replace"))


def read_ready(fd: int, size: int) -> bytes:
    """Up to `size` bytes from `fd`, which the loop has said is readable; at its end (or on an
    error, which ends it as surely) b"", and the loop stops watching it."""
    try:
        data = os.read(fd, size)
    except OSError:
        data = b""
    if not data:
        asyncio.get_running_loop().remove_reader(fd)
    return data


def dial_discovery_messages(node_id: str, dial_id: str, prefix: str) -> list[DiscoveryMessage]:
    """Home Assistant: the dial as an `event` entity, its position and glyph as sensors, and its
    frame losses as a diagnostic sensor; one device config of its own, grouped under the node's
    device (the same `device` identifiers)."""
    uid = f"gibsey_{node_id}_dial_{dial_id}".replace("-", "_")
    # The topics of the old per-entity configs, migrated and cleared (spine/discovery.py).
    disc = f"{node_id}_dial_{dial_id}"
    components: dict[str, dict[str, Any]] = {}
    legacy: list[str] = []
    for platform, object_id, extra in _dial_entities(node_id, dial_id):
        components[object_id] = component(
            platform, f"{uid}_{object_id}", {**extra, **availability_config(node_id)}
        )
        legacy.append(f"{prefix}/{platform}/{disc}/{object_id}/config")
    return device_messages(prefix, uid, device_config(node_id), components, legacy)


def _dial_entities(node_id: str, dial_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(component, object id, entity config) of each Home Assistant entity of one dial."""
    state = state_topic(node_id, dial_id)
    return [
        (
            "event",
            "turn",
            {
                "name": f"Dial {dial_id}",
                "state_topic": event_topic(node_id, dial_id),
                "event_types": ["rotated", "pressed", "long_pressed"],
                "icon": "mdi:rotate-right",
            },
        ),
        (
            "sensor",
            "position",
            {
                "name": f"Dial {dial_id} position",
                "state_topic": state,
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": state,
                "json_attributes_template": (
                    "{{ {'symbol': value_json.symbol, 'rotation': value_json.rotation, "
                    "'glyph': value_json.glyph, 'colour': value_json.colour} | tojson }}"
                ),
                "icon": "mdi:knob",
            },
        ),
        (
            "sensor",
            "glyph",
            {
                "name": f"Dial {dial_id} glyph",
                "state_topic": state,
                "value_template": "{{ value_json.glyph }} ({{ value_json.rotation_name }})",
                "icon": "mdi:alpha-g-circle",
            },
        ),
        (
            "sensor",
            "frames_lost",
            {
                "name": f"Dial {dial_id} frames lost",
                "state_topic": state,
                "value_template": "{{ value_json.stats.lost }}",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
                "icon": "mdi:lan-disconnect",
            },
        ),
    ]
