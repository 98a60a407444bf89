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
  in one log line and alert per `alert_interval` with the count; only a frame that decodes (a
  hello, a turn, a press) takes a place for a new id: anything else on its topic is counted as
  the bridge's (`noise`, `corrupt`, ...), never refused, and nothing is kept for it; a dial
  silent for `forget_after` seconds gives its place to a new id, and its retained state and
  Home Assistant device config are cleared (`forgotten`);
* learns, at each connect, the dials of this node whose state or Home Assistant config the broker
  retains from before a restart (its memory is of this run only): each is known but silent from
  then on, forgotten (its retained topics cleared) if not heard within `forget_after`, and the
  first to give its place to a new dial; never more than `max_dials` are kept;
* keeps a retained state document per dial on `gibsey/v1/<node>/dial/<dial_id>/state` (with the
  dial's own frame counts) and sends each turn and press to `.../dial/<dial_id>/event`, announced
  to Home Assistant by MQTT discovery as a device of its own (through the node's) with an `event`
  entity and sensors that go unavailable when the dial stops saying hello. These topics have six
  levels, so the router's `gibsey/v1/+/+/+` subscription never mistakes them for events.

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
from gibsey.core.envelope import DIAL_ACTOR, DialPressed, GlyphRotated, SafetyAlert
from gibsey.core.topics import TOPIC_ROOT, status_topic
from gibsey.dialcore import frame as df
from gibsey.dialcore.config import DEFAULTS as FIRMWARE_DEFAULTS
from gibsey.dialcore.qdpi import CHARACTERS, ROTATIONS, symbol_name
from gibsey.node.dial.config import DialConfig
from gibsey.node.spine.discovery import (
    DiscoveryMessage,
    availability_config,
    component,
    device_messages,
    device_topic,
    node_identifier,
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
CLEARED_KEPT = 256  # leftovers cleared for want of a place, remembered so as not to count twice
# A live dial says hello this often (the firmware's `heartbeat_s`), and the node republishes its
# state document at every frame, hellos included ...
HELLO_INTERVAL_S = int(FIRMWARE_DEFAULTS["heartbeat_s"])
# ... so Home Assistant shows a dial's sensors unavailable once its state is this old: unplugged
# (or out of Wi-Fi), it greys out by itself within 20 s, while three lost hellos in a row do not.
EXPIRE_AFTER_S = 4 * HELLO_INTERVAL_S


def frame_topic(node_id: str, dial_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/{dial_id}/frame"


def frame_subscription(node_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/+/frame"


def state_topic(node_id: str, dial_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/{dial_id}/state"


def event_topic(node_id: str, dial_id: str) -> str:
    return f"{TOPIC_ROOT}/{node_id}/dial/{dial_id}/event"


@dataclass
class DialCounts:
    """What one dial's frames came to, in its state document (`stats`): its own, so "Dial X
    frames lost" in Home Assistant is X's; the bridge's DialStats are the sums."""

    frames: int = 0
    rotations: int = 0
    presses: int = 0
    hellos: int = 0
    lost: int = 0
    stale: int = 0
    corrupt: int = 0
    truncated: int = 0
    malformed: int = 0
    # Turns over the node's bound for one source (the dial's id), dropped here before any
    # event: a flood of frames (a loose board, a script on the serial port) publishes nothing.
    throttled: int = 0


@dataclass
class DialStats(DialCounts):
    """The bridge's totals (/metrics): every dial's counts, frames of no known dial (a board
    before its hello, a bad id in a topic) included, and what belongs to no dial at all."""

    noise: int = 0
    serial_opens: int = 0
    serial_disconnects: int = 0
    bytes_in: int = 0
    refused: int = 0  # frames of a new dial id beyond max_dials, dropped
    # Dials whose retained state and Home Assistant device were cleared: silent for
    # forget_after (their place went to a new id, or they were known only from before a
    # restart), or from before a restart with no place left for them.
    forgotten: int = 0


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
    stats: DialCounts = field(default_factory=DialCounts)

    @property
    def frames(self) -> int:
        return self.stats.frames


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
        # Those of them known only from the broker's retained topics (from before a restart),
        # not heard since: never more than _heard holds (see _learn).
        self._unheard: set[str] = set()
        # Leftovers cleared at once for want of a place: each comes on two retained topics (its
        # state, its Home Assistant config), cleared and counted once. Bounded, the oldest let
        # go first: a broker's retained topics are anyone's to fill.
        self._cleared: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._refused_alerts = DropAlerts(config.alert_interval, time.monotonic())
        self._last_refused = ""
        self._said_cannot_open = ""  # why the port cannot be opened, said once until it opens
        # Each serial port's dial, as its last hello named it in this run: a board plugged back
        # sends its boot hello before the port is open again (the scan's interval), so its first
        # turns would land on a dial called "serial", a phantom taking a place and a Home
        # Assistant device of its own, until the next heartbeat hello.
        self._serial_ids: collections.OrderedDict[str, str] = collections.OrderedDict()
        # The broker hands over the retained topics of this node's dials at each connect: how
        # the dials from before a restart are learned. The node's own publications come back
        # on these only over MQTT 3.1.1 (no no-local there); they are of dials it knows, ignored.
        node.add_subscription(state_topic(node.node_id, "+"), self.on_retained_state)
        if node.config.node.discovery_prefix:
            prefix = node.config.node.discovery_prefix
            node.add_subscription(device_topic(prefix, "+"), self.on_retained_config)

    # -- frames in ---------------------------------------------------------------------------
    def feed_bytes(self, channel: FrameChannel, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        before = channel.splitter.overlong
        for line in channel.splitter.feed(data):
            self.feed_line(channel, line)
        if channel.splitter.overlong != before:
            self._anomaly("truncated", channel.splitter.overlong - before, channel, "overlong")

    def feed_line(self, channel: FrameChannel, line: str) -> None:
        """One frame line from a channel: decode, check its sequence, emit its event. A frame
        after the cut-short start of another on the same line (a board reset mid-line, then its
        boot hello; a newline lost on the wire) is taken, the cut one counted: each frame has
        its own checksum, so the line's tail stands on its own."""
        start = line.rfind("$")
        if start > 0:  # what comes before is the rest of a frame cut short, whichever part
            self._anomaly("truncated", 1, channel, "a frame was cut short before this one")
            line = line[start:]
        fr = self._decode(channel, line)
        if fr is not None:
            self._take(channel, fr)

    def _decode(self, channel: FrameChannel, line: str) -> df.Frame | None:
        """The line's frame; None: it is none, counted (noise as the bridge's alone, the rest as
        the channel's dial's too, if it has one)."""
        try:
            return df.decode(line)
        except df.FrameError as exc:
            reason = df.REASONS[exc.reason]
            if reason == "noise":
                self.stats.noise += 1
            else:
                self._anomaly(reason, 1, channel, exc.detail)
            return None

    def _take(self, channel: FrameChannel, fr: df.Frame) -> None:
        """A decoded frame of a channel: its sequence checked, its event emitted."""
        gap = channel.tracker.accept(fr.seq, fr.kind == df.HELLO and fr.boot)
        if gap < 0:
            self._anomaly("stale", 1, channel, f"seq {fr.seq} arrived after a later frame")
            return
        if gap > 0:
            self._anomaly("lost", gap, channel, f"gap before seq {fr.seq}")
        if fr.kind == df.HELLO:
            if fr.dial_id and DIAL_ID.match(fr.dial_id) and channel.transport == "serial":
                channel.dial_id = self._serial_ids[channel.name] = fr.dial_id
                if len(self._serial_ids) > self.config.max_dials:  # ports come and go: bounded
                    self._serial_ids.popitem(last=False)
        view = self._view(channel, fr.firmware if fr.kind == df.HELLO else "")
        self._count(view, "frames")
        if fr.kind == df.HELLO:
            self._count(view, "hellos")
        if view is None:
            return
        view.last_seen = time.time()
        if fr.kind == df.ROTATE and not self._turn_admitted(view):
            return
        view.symbol, view.rotation = fr.symbol, fr.rotation
        if fr.kind == df.ROTATE:
            self._count(view, "rotations")
            view.position = fr.position
            self._rotated(channel, fr.symbol, fr.rotation, fr.seq)
            self._event(view, "rotated")
        elif fr.kind == df.PRESS:
            self._count(view, "presses")
            self.node.emit(
                "dial/pressed",
                DialPressed(
                    symbol=fr.symbol,
                    rotation=fr.rotation,
                    press="long" if fr.long else "short",
                    source=channel.dial_id,
                ),
                actor=DIAL_ACTOR,
            )
            self._event(view, "long_pressed" if fr.long else "pressed")
        self._publish_state(view)

    def _turn_admitted(self, view: DialView) -> bool:
        """The turn within its dial's bound (the node's per-source one, spent here, not again
        by the ritual's gate: node/parts.py), or counted in the node's `throttled` and dropped
        before its event, its dial event and its state are published. Tried (an outside
        tester): 40,000 frames in 4 s, each throttled at the ritual but published three times
        first, filled the node's outbox, which dropped other visitors' rituals."""
        if self.node.inputs.admit_source(view.dial_id, here=True) is None:
            return True
        self._count(view, "throttled")
        return False

    def _rotated(self, channel: FrameChannel, symbol: int, rotation: int, seq: int) -> None:
        """The turn's event, sent and handled at once: the ritual runs now, not after a broker
        round trip (the visitor is waiting). With tracing on, the turn's trace begins here and
        the glyph/rotated envelope carries it (core/trace.py)."""
        rotated = GlyphRotated(symbol=symbol, rotation=rotation, source=channel.dial_id)
        if not trace.enabled():
            self.node.send("glyph/rotated", rotated, actor=DIAL_ACTOR, handle_now=True)
            return
        attributes: dict[str, str | int] = {
            "gibsey.node": self.node.node_id,
            "gibsey.dial": channel.name,
            "gibsey.seq": seq,
        }
        with trace.span("dial frame", None, attributes):
            self.node.send("glyph/rotated", rotated, actor=DIAL_ACTOR, handle_now=True)

    def _view(self, channel: FrameChannel, firmware: str) -> DialView | None:
        """The channel's dial, made and announced at its first frame, and again once its hello
        names its firmware (its Home Assistant device's `sw_version`); None: refused (a serial
        board's hello naming a new id beyond max_dials; MQTT's are refused before this)."""
        if not self._admit(channel.dial_id):
            return None
        view = self.dials.get(channel.dial_id)
        if view is None:
            view = self.dials[channel.dial_id] = DialView(channel.dial_id)
        view.transport = channel.transport
        if firmware and firmware != view.firmware:
            view.firmware = firmware
            self._announced.discard(channel.dial_id)
        if channel.dial_id not in self._announced:
            self._announce(view)
        return view

    def _count(self, view: DialView | None, kind: str, n: int = 1) -> None:
        """`n` more of `kind` in the bridge's totals and, if the frame's dial is known, its own."""
        setattr(self.stats, kind, getattr(self.stats, kind) + n)
        if view is not None:
            setattr(view.stats, kind, getattr(view.stats, kind) + n)

    # -- the bound on dial ids ---------------------------------------------------------------
    def _admit(self, dial_id: str) -> bool:
        """Whether a frame of `dial_id` is taken (and it heard now): a known dial's always, a new
        one's while fewer than max_dials are known or one of them has gone quiet."""
        now = time.monotonic()
        if dial_id in self._heard:
            self._heard[dial_id] = now
            self._heard.move_to_end(dial_id)
            self._unheard.discard(dial_id)
            return True
        if len(self._heard) >= self.config.max_dials and not self._make_room(now):
            # Counted only: said by housekeeping once per interval, never per frame.
            self.stats.refused += 1
            self._last_refused = dial_id
            return False
        self._heard[dial_id] = now
        self._cleared.pop(dial_id, None)  # in again: a later leftover of it is counted anew
        return True

    def _make_room(self, now: float) -> bool:
        """A place for a new dial, if one can be had: a dial known only from before the node's
        start gives its place first, however recently learned (a leftover must not keep a live
        dial out); else the least recently heard dial, if silent for forget_after."""
        leftover = next((d for d in self._heard if d in self._unheard), None)
        if leftover is None:
            return self._forget_quiet(now)
        self._forget(leftover)
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
        device config cleared, if it has any: published in this run, or learned at connect."""
        del self._heard[dial_id]
        leftover = dial_id in self._unheard
        self._unheard.discard(dial_id)
        self._mqtt_channels.pop(dial_id, None)
        self._announced.discard(dial_id)
        self.stats.forgotten += 1
        if self.dials.pop(dial_id, None) is None and not leftover:
            return  # no valid frame ever came: nothing was published for it
        if leftover:
            log.info("dial: %s, retained from before the node's start, forgotten", dial_id)
        else:
            after = self.config.forget_after
            log.info("dial: %s silent for %.0fs, forgotten for a new dial", dial_id, after)
        self._clear_retained(dial_id)

    def _clear_retained(self, dial_id: str) -> None:
        """A dial's retained Home Assistant device config and state document cleared (an empty
        retained payload: Home Assistant removes the device). The config first, so that Home
        Assistant has stopped reading the state when it empties (no template of nothing)."""
        spine = self.node.spine
        if spine is None:
            return
        prefix = self.node.config.node.discovery_prefix
        if prefix:
            spine.publish(dial_config_topic(prefix, self.node.node_id, dial_id), b"", retain=True)
        spine.publish(state_topic(self.node.node_id, dial_id), b"", retain=True)

    # -- dials from before a restart -----------------------------------------------------------
    def on_retained_state(self, topic: str, payload: bytes) -> None:
        """A state document of one of this node's dials: at connect, those the broker retains
        (an empty payload is one cleared)."""
        if payload:
            self._learn(topic.split("/")[4])

    def on_retained_config(self, topic: str, payload: bytes) -> None:
        """A Home Assistant device config (anyone's: the filter cannot say whose): one of this
        node's dials, by its discovery id, and by its entities' availability on this node's
        status (another node may be called `<this node>_dial_<x>`)."""
        stem = dial_uid(self.node.node_id, "")
        discovery_id = topic.split("/")[-2]
        dial_id = discovery_id[len(stem) :]
        if not payload or not discovery_id.startswith(stem) or dial_id in self._heard:
            return
        if status_topic(self.node.node_id) in availability_topics(payload):
            self._learn(dial_id)

    def _learn(self, dial_id: str) -> None:
        """A dial with retained topics the node has not heard in this run (they are from before
        it started): known from now on, but silent, so it is forgotten, its topics cleared,
        unless heard within forget_after, and gives its place first to a new dial. With no place
        left its topics are cleared at once, memory bounded as ever (a live dial comes back with
        its next hello). An old release's config under `-` replaced by `_` is learned as the
        dial so named, and cleared so."""
        if dial_id in self._heard or not DIAL_ID.match(dial_id):
            return  # known: a dial heard in this run, or the node's own publication come back
        if len(self._heard) >= self.config.max_dials:
            if dial_id in self._cleared:
                return  # its other retained topic: cleared with the first
            self._cleared[dial_id] = None
            if len(self._cleared) > CLEARED_KEPT:
                self._cleared.popitem(last=False)
            log.info("dial: %s, retained from before the node's start: no place, cleared", dial_id)
            self.stats.forgotten += 1
            self._clear_retained(dial_id)
            return
        self._heard[dial_id] = time.monotonic()
        self._unheard.add(dial_id)

    def forget_leftovers(self, now: float | None = None) -> None:
        """Dials known only from before the node's start and not heard for forget_after are
        forgotten, a place needed or not: nothing else would ever clear their retained state and
        Home Assistant device. (A dial heard in this run keeps its place, and its device, shown
        unavailable by expire_after, until a new dial needs the place.)"""
        after = self.config.forget_after
        if not after:
            return  # 0: a known dial is never forgotten
        now = time.monotonic() if now is None else now
        for dial_id in [d for d in self._unheard if now - self._heard[d] >= after]:
            self._forget(dial_id)

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
        self._count(self.dials.get(channel.dial_id), kind, n)
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

    def _announce(self, view: DialView) -> None:
        prefix = self.node.config.node.discovery_prefix
        if not prefix or self.node.spine is None:
            return
        self._announced.add(view.dial_id)
        msgs = dial_discovery_messages(self.node.node_id, view.dial_id, prefix, view.firmware)
        for msg in msgs:
            self.node.spine.publish(msg.topic, msg.payload, retain=msg.retain)

    def announce_all(self) -> None:
        """Every dial heard in this run announced to Home Assistant again (after a reconnect,
        or when Home Assistant says it is back: node.daemon hears its birth message); those only
        learned from before the start are not: they are to be cleared, not renewed."""
        self._announced.clear()
        for view in self.dials.values():
            self._announce(view)

    # -- services ----------------------------------------------------------------------------
    async def housekeeping(self) -> None:
        """Coalesced alerts go out; dials from before the start not heard are forgotten; after
        a broker reconnect the dials are announced again."""
        while True:
            await asyncio.sleep(1.0)
            self.flush_alerts()
            self.say_refused()
            self.forget_leftovers()
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
            # Off the loop: `auto` lists every tty in sysfs (0.5 ms here, several on a Pi Zero),
            # once a scan_interval while no board is plugged in, the dial's usual state when
            # the dials speak MQTT; on the loop, a turn arriving then would wait for it.
            path = await asyncio.to_thread(self.find_port)
            if path is None:
                await asyncio.sleep(self.config.scan_interval)
                continue
            try:
                port = serial.Serial(path, self.config.baud, timeout=0, exclusive=True)
            except (OSError, serial.SerialException) as exc:
                self._cannot_open(path, exc)
                await asyncio.sleep(self.config.scan_interval)
                continue
            self._said_cannot_open = ""
            try:
                await self._read_port(port, path)
            finally:
                with contextlib.suppress(Exception):
                    port.close()

    def _cannot_open(self, path: str, exc: Exception) -> None:
        """The port is there but will not open (another program holds it: a terminal left open,
        ModemManager; its permissions): said once in a warning and an alert while the reason
        stays the same, so a technician learns why the dial is dead; the retries, every
        scan_interval, are logged at debug only."""
        why = f"{path}: {exc}"
        if why == self._said_cannot_open:
            log.debug("dial: cannot open %s", why)
            return
        self._said_cannot_open = why
        detail = f"cannot open the dial's port {why[:1000]}; trying again until it opens"
        log.warning("dial: %s", detail)
        if self.node.spine is not None:
            self.node.alert(SafetyAlert(reason="dial_port_unavailable", detail=detail))

    async def _read_port(self, port: serial.Serial, path: str) -> None:
        loop = asyncio.get_running_loop()
        dial_id = self._serial_ids.get(path, "serial")  # "serial" until a hello names it
        channel = FrameChannel(name=path, transport="serial", dial_id=dial_id)
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
        line = payload.decode("ascii", "replace")
        channel = channels.get(dial_id)
        if channel is not None:
            self.feed_line(channel, line)
            return
        if not DIAL_ID.match(dial_id):
            # No dial id ("" is none): its count is the bridge's, never a dial's.
            ch = FrameChannel(f"mqtt:{dial_id[:40]}", "mqtt", "")
            self._anomaly("malformed", 1, ch, "bad dial id in topic")
            return
        # A new id takes a place only with a frame that decodes: anything else is counted as the
        # bridge's (a channel of no dial) and neither takes a place nor is refused, else one
        # non-frame per id (anyone may publish) would keep every real dial out, unseen in
        # gibsey_dials_known. Nothing is kept for it: no channel, no place.
        fr = self._decode(FrameChannel(f"mqtt:{dial_id}", "mqtt", ""), line)
        if fr is None or not self._admit(dial_id):
            return
        channel = channels[dial_id] = FrameChannel(f"mqtt:{dial_id}", "mqtt", dial_id)
        self._take(channel, fr)


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


def dial_uid(node_id: str, dial_id: str) -> str:
    """A dial's Home Assistant discovery id and device identifier, the stem of its entities'
    unique ids: the dial id as it is. Its characters (a-z 0-9 _ -: DIAL_ID, and the firmware's
    own check) are all allowed in a discovery id, and the dial id ends it, so two dials never
    share one (`-` replaced by `_`, as releases before did, made x-1 and x_1 one device)."""
    return f"gibsey_{node_id}_dial_{dial_id}"


def dial_config_topic(prefix: str, node_id: str, dial_id: str) -> str:
    return device_topic(prefix, dial_uid(node_id, dial_id))


def availability_topics(payload: bytes) -> set[str]:
    """The availability topics a device config's components name (none, if it is no config)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return set()
    components = doc.get("components") if isinstance(doc, dict) else None
    if not isinstance(components, dict):
        return set()
    topics = (c.get("availability_topic") for c in components.values() if isinstance(c, dict))
    return {t for t in topics if isinstance(t, str)}


def dial_device_config(node_id: str, dial_id: str, firmware: str = "") -> dict[str, Any]:
    """The dial as a Home Assistant device of its own (so one stale dial can be deleted in Home
    Assistant's UI), connected through the node's device (`via_device`)."""
    device: dict[str, Any] = {
        "identifiers": [dial_uid(node_id, dial_id)],
        "name": f"Gibsey {node_id} dial {dial_id}",
        "manufacturer": "Gibsey",
        "model": "Gibsey dial",
        "via_device": node_identifier(node_id),
    }
    if firmware:  # known from the dial's hello
        device["sw_version"] = firmware
    return device


def dial_discovery_messages(
    node_id: str, dial_id: str, prefix: str, firmware: str = ""
) -> list[DiscoveryMessage]:
    """Home Assistant: the dial as an `event` entity, its state and glyph as sensors, and its
    frame losses as a diagnostic sensor; one device config of its own."""
    uid = dial_uid(node_id, dial_id)
    # The topics of the old per-entity configs, migrated and cleared (spine/discovery.py).
    disc = f"{node_id}_dial_{dial_id}"
    components: dict[str, dict[str, Any]] = {}
    legacy: list[str] = []
    for platform, object_id, extra in _dial_entities(node_id, dial_id):
        components[object_id] = component(
            platform, f"{uid}_{object_id}", {**extra, **availability_config(node_id)}
        )
        legacy.append(f"{prefix}/{platform}/{disc}/{object_id}/config")
    device = dial_device_config(node_id, dial_id, firmware)
    return device_messages(prefix, uid, device, components, legacy)


def _dial_entities(node_id: str, dial_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(component, object id, entity config) of each Home Assistant entity of one dial. Names
    are the entity's own (Home Assistant puts the device's name before them); the event entity,
    the dial itself, has none: it is called as its device is. Each sensor expires (shown
    unavailable) once the dial's state is EXPIRE_AFTER_S old."""
    state = state_topic(node_id, dial_id)
    return [
        (
            "event",
            "turn",
            {
                "name": None,
                "state_topic": event_topic(node_id, dial_id),
                "event_types": ["rotated", "pressed", "long_pressed"],
                "icon": "mdi:rotate-right",
            },
        ),
        (
            # The glyph state (symbol * 4 + rotation, what a ritual runs on), under the object
            # id "position" of releases before, so its unique id and history stay. A code, not
            # a quantity: no state_class (its mean or graph means nothing).
            "sensor",
            "position",
            {
                "name": "State",
                "state_topic": state,
                "value_template": "{{ value_json.state }}",
                "expire_after": EXPIRE_AFTER_S,
                "json_attributes_topic": state,
                "json_attributes_template": (
                    "{{ {'symbol': value_json.symbol, 'rotation': value_json.rotation, "
                    "'glyph': value_json.glyph, 'colour': value_json.colour, "
                    "'position': value_json.position} | tojson }}"
                ),
                "icon": "mdi:knob",
            },
        ),
        (
            "sensor",
            "glyph",
            {
                "name": "Glyph",
                "state_topic": state,
                "value_template": "{{ value_json.glyph }} ({{ value_json.rotation_name }})",
                "expire_after": EXPIRE_AFTER_S,
                "icon": "mdi:alpha-g-circle",
            },
        ),
        (
            "sensor",
            "frames_lost",
            {
                "name": "Frames lost",
                "state_topic": state,
                "value_template": "{{ value_json.stats.lost }}",  # this dial's own count
                "state_class": "total_increasing",
                "expire_after": EXPIRE_AFTER_S,
                "entity_category": "diagnostic",
                "icon": "mdi:lan-disconnect",
            },
        ),
    ]
