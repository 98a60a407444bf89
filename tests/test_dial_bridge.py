"""The dial bridge against a real Mosquitto, with a pseudo-terminal pair as the USB serial port.

The test holds the pty's master side (the board's end); the bridge opens the slave by a stable
path, a symlink like /dev/serial/by-id/... is for a real Pico. Unplugging is closing the master
(the slave then reads EIO/EOF, as a vanished /dev/ttyACM0 does); replugging is a new pty pair with
the symlink pointed at it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gibsey.dialcore import frame as df
from gibsey.harness.waiting import until
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.dial.bridge import (
    DialBridge,
    dial_discovery_messages,
    frame_topic,
    state_topic,
)
from gibsey.node.dial.config import DialConfig
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory, started
from tests.events import topic


class Pty:
    """One end of a fake USB serial port: write frames to the master; the bridge reads the slave
    through `link` (a symlink, like /dev/serial/by-id/...)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, slave = os.openpty()
        tmp = link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        os.replace(tmp, link)
        os.close(slave)

    def write(self, data: str | bytes) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def unplug(self) -> None:
        os.close(self.master)
        self.link.unlink(missing_ok=True)


@dataclass
class Rig:
    node: Node
    bridge: DialBridge
    broker: Mosquitto
    port_link: Path

    @property
    def nid(self) -> str:
        return self.node.node_id


@pytest.fixture
async def rig(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Rig]:
    link = tmp_path / "ttyDIAL"
    config = GibseyConfig(dial=DialConfig(serial=str(link), scan_interval=0.02, alert_interval=0.0))
    node = Node(tmp_path / "data", config)
    bridge = node.parts.dial
    assert bridge is not None, "the dial bridge is not in node/parts.py"
    async with started(node, mosquitto.url):
        yield Rig(node, bridge, mosquitto, link)


async def say_hello_over_mqtt(rig: Rig, pico: Collector, dial_id: str, symbol: int) -> None:
    """Until the bridge has it: its subscription is on the node's connection, confirmed by the
    broker some time after the node connected (a boot hello again is harmless)."""
    t = frame_topic(rig.nid, dial_id)

    async def _hello() -> None:
        while dial_id not in rig.bridge.dials:
            await pico.publish(t, df.hello(0, dial_id, "fw", symbol, 0, True).strip())
            for _ in range(20):
                if dial_id in rig.bridge.dials:
                    return
                await asyncio.sleep(0.01)

    await asyncio.wait_for(_hello(), 10)


async def subscribe(rig: Rig, factory: CollectorFactory, *kinds: str) -> Collector:
    return await factory(rig.broker.port, *(topic(rig.nid, k) for k in kinds))


def payloads(col: Collector, kind: str) -> list[dict[str, object]]:
    return [e["payload"] for e in col.of_kind(kind)]


async def test_frames_in_events_out(rig: Rig, collector_factory: CollectorFactory) -> None:
    col = await subscribe(
        rig, collector_factory, "glyph/rotated", "ritual/performed", "dial/pressed"
    )
    state = await collector_factory(rig.broker.port, state_topic(rig.nid, "dial7"))
    pty = Pty(rig.port_link)
    await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    pty.write(b"MicroPython v1.29.0; Raspberry Pi Pico with RP2040\r\n")  # noise on the port
    pty.write(df.hello(0, "dial7", "gdial-1.0.0", 2, 0, True))
    pty.write(df.rotate(1, 2, 1, 1) + df.rotate(2, 2, 2, 2))
    pty.write(df.rotate(3, 2, 3, 3)[:10])  # split across writes, as USB packets split lines
    pty.write(df.rotate(3, 2, 3, 3)[10:] + df.press(4, 2, 3, True))
    await col.wait_for(lambda c: len(c.of_kind("ritual/performed")) >= 3)
    await col.wait_for(lambda c: c.of_kind("dial/pressed"))
    rotated = payloads(col, "glyph/rotated")
    assert [(p["symbol"], p["rotation"], p["source"]) for p in rotated] == [
        (2, 1, "dial7"),
        (2, 2, "dial7"),
        (2, 3, "dial7"),
    ]
    assert all(e["actor"] == "dial" for e in col.of_kind("glyph/rotated"))
    assert {p["state"] for p in payloads(col, "ritual/performed")} == {9, 10, 11}
    assert payloads(col, "dial/pressed") == [
        {"symbol": 2, "rotation": 3, "press": "long", "source": "dial7"}
    ]
    await state.wait_for(lambda c: c.messages and json.loads(c.messages[-1][1])["state"] == 11)
    doc = json.loads(state.messages[-1][1])
    assert doc["glyph"] == "glyph-marrow" and doc["rotation_name"] == "dream"
    assert doc["firmware"] == "gdial-1.0.0" and doc["transport"] == "serial"
    s = rig.bridge.stats
    assert (s.frames, s.rotations, s.presses, s.noise) == (5, 3, 1, 1)
    assert s.lost == s.corrupt == s.truncated == s.stale == 0


async def test_bad_frames_are_counted_dropped_and_reported(
    rig: Rig, collector_factory: CollectorFactory
) -> None:
    col = await subscribe(rig, collector_factory, "glyph/rotated", "safety/alert")
    pty = Pty(rig.port_link)
    await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    good = df.rotate(1, 0, 1, 1)
    corrupt = good.replace(",0,1,", ",0,2,")  # a flipped digit: the CRC no longer matches
    truncated = df.rotate(2, 0, 2, 2)[:12] + "\n"
    pty.write(df.hello(0, "d1", "fw", 0, 0, True) + good + corrupt + truncated)
    pty.write(df.rotate(5, 0, 3, 3))  # seq 2..4 never arrived: 3 lost
    pty.write(df.rotate(4, 0, 2, 2))  # out of order: counted and dropped
    pty.write(df.rotate(6, 0, 0, 4))
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) >= 3)
    await until(lambda: rig.bridge.stats.stale == 1, 10, "a stale frame counted")
    rotations = [p["rotation"] for p in payloads(col, "glyph/rotated")]
    assert rotations == [1, 3, 0]
    s = rig.bridge.stats
    assert (s.corrupt, s.truncated, s.lost, s.stale) == (1, 1, 3, 1)
    want = {
        "dial_frames_corrupt",
        "dial_frames_truncated",
        "dial_frames_lost",
        "dial_frames_out_of_order",
    }
    await col.wait_for(lambda c: want <= {p["reason"] for p in payloads(c, "safety/alert")})
    lost = next(p for p in payloads(col, "safety/alert") if p["reason"] == "dial_frames_lost")
    assert "3 frame(s) lost" in str(lost["detail"])


async def test_unplug_and_replug(rig: Rig, collector_factory: CollectorFactory) -> None:
    col = await subscribe(rig, collector_factory, "glyph/rotated", "safety/alert")
    pty = Pty(rig.port_link)
    await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    pty.write(df.hello(0, "d1", "fw", 1, 0, True) + df.rotate(1, 1, 1, 1))
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 1)
    sent = rig.bridge.stats.bytes_in
    pty.write(df.rotate(2, 1, 2, 2)[:8])  # the cable is pulled mid-frame
    await until(lambda: rig.bridge.stats.bytes_in == sent + 8, 10, "every byte read")
    pty.unplug()
    await asyncio.wait_for(rig.bridge.serial_gone.wait(), 10)
    assert rig.bridge.stats.serial_disconnects == 1
    assert rig.bridge.stats.truncated == 1
    # The board comes back (it rebooted: sequence from 0 again, not counted as a loss).
    pty = Pty(rig.port_link)
    await until(lambda: rig.bridge.stats.serial_opens == 2, 10, "the serial port reopened")
    pty.write(df.hello(0, "d1", "fw", 1, 0, True) + df.rotate(1, 1, 3, 3))
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 2)
    assert payloads(col, "glyph/rotated")[-1]["rotation"] == 3
    assert rig.bridge.stats.lost == 0
    reasons = {p["reason"] for p in payloads(col, "safety/alert")}
    assert {"dial_connected", "dial_disconnected"} <= reasons
    pty.unplug()


async def test_frames_over_mqtt_like_a_pico_w(
    rig: Rig, collector_factory: CollectorFactory
) -> None:
    col = await subscribe(rig, collector_factory, "glyph/rotated", "dial/pressed")
    pico = await collector_factory(rig.broker.port)
    await say_hello_over_mqtt(rig, pico, "wifi-dial", 4)
    t = frame_topic(rig.nid, "wifi-dial")
    await pico.publish(t, df.rotate(1, 4, 1, 1).strip())
    await pico.publish(t, df.rotate(3, 4, 3, 3).strip())  # seq 2 lost on Wi-Fi
    await pico.publish(t, df.press(4, 4, 3, False).strip())
    await pico.publish(t, "garbage$GD,5,R*0000")
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 2 and c.of_kind("dial/pressed"))
    assert [p["source"] for p in payloads(col, "glyph/rotated")] == ["wifi-dial", "wifi-dial"]
    await until(lambda: rig.bridge.stats.truncated == 1, 10, "a truncated frame counted")
    assert rig.bridge.stats.lost == 1
    assert rig.bridge.dials["wifi-dial"].transport == "mqtt"


async def test_home_assistant_discovery(rig: Rig, collector_factory: CollectorFactory) -> None:
    uid = f"gibsey_{rig.nid}_dial_hall"
    col = await collector_factory(rig.broker.port, f"homeassistant/device/{uid}/config")
    pico = await collector_factory(rig.broker.port)
    await say_hello_over_mqtt(rig, pico, "hall", 0)
    await col.wait_for(lambda c: len(c.messages) >= 1)
    config = json.loads(col.messages[0][1])
    components = config["components"]
    event = components["turn"]
    assert event["platform"] == "event"
    assert event["event_types"] == ["rotated", "pressed", "long_pressed"]
    assert event["state_topic"] == f"gibsey/v1/{rig.nid}/dial/hall/event"
    assert components["position"]["state_topic"] == state_topic(rig.nid, "hall")
    # The dial is a device of its own, connected through the node's.
    assert config["device"]["identifiers"] == [uid]
    assert config["device"]["via_device"] == f"gibsey_{rig.nid}"
    assert config["device"]["sw_version"] == "fw"  # from its hello


def test_alerts_are_coalesced_per_reason() -> None:
    sent: list[str] = []

    class FakeNode:
        node_id = "n1"
        spine = object()
        config = GibseyConfig()

        def add_subscription(self, *a: object) -> None:
            pass

        def alert(self, alert: object) -> None:
            sent.append(str(getattr(alert, "detail", "")))

        def emit(self, *a: object, **k: object) -> None:
            pass

    bridge = DialBridge(FakeNode(), DialConfig(alert_interval=10.0))  # type: ignore[arg-type]
    bridge.flush_alerts(now=0.0)
    from gibsey.node.dial.bridge import FrameChannel

    ch = FrameChannel("test", "serial", "d")
    for _ in range(50):
        bridge.feed_line(ch, "$GD,1,R,1,1,1*0000")
    assert bridge.stats.corrupt == 50
    assert len(sent) == 1
    bridge.flush_alerts(now=1e12)
    assert len(sent) == 2 and "49 frame(s) corrupt" in sent[1] and "(50 in all)" in sent[1]


def test_config_and_discovery_shapes() -> None:
    cfg = DialConfig.model_validate({"serial": "/dev/ttyACM0", "scan_interval": "2"})
    assert cfg.serial == "/dev/ttyACM0" and cfg.scan_interval == 2.0 and cfg.mqtt
    msgs = dial_discovery_messages("n1", "d-1", "homeassistant")
    old = [
        "homeassistant/event/n1_dial_d-1/turn/config",
        "homeassistant/sensor/n1_dial_d-1/position/config",
        "homeassistant/sensor/n1_dial_d-1/glyph/config",
        "homeassistant/sensor/n1_dial_d-1/frames_lost/config",
    ]
    # The old per-entity configs migrated, the device config, the old topics cleared.
    # The dial id as it is in the discovery id: d-1 and d_1 are two devices.
    assert [m.topic for m in msgs] == [*old, "homeassistant/device/gibsey_n1_dial_d-1/config", *old]
    assert [m.retain for m in msgs] == [False] * 4 + [True] * 5
    assert json.loads(msgs[4].payload)["components"]["turn"]["platform"] == "event"


async def test_auto_finds_the_pico_by_its_vendor_id_off_the_loop(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serial = "auto"`: the board is the port whose USB vendor id is Raspberry Pi's, found by
    pyserial's scan. USB enumeration cannot exist here: the scan's answer is the one stand-in (a
    port of another vendor, then the Pico on the pty). The scan runs off the event loop's
    thread: it reads sysfs once a scan_interval while no board is plugged in."""
    from serial.tools import list_ports, list_ports_common

    from gibsey.node.dial.config import PICO_VID

    link = tmp_path / "ttyACM0"
    scanned_on: set[str] = set()

    def comports() -> list[list_ports_common.ListPortInfo]:
        import threading

        scanned_on.add(threading.current_thread().name)
        other = list_ports_common.ListPortInfo("/dev/ttyUSB9", skip_link_detection=True)
        other.vid = 0x0403  # an FTDI adapter: not ours
        pico = list_ports_common.ListPortInfo(str(link), skip_link_detection=True)
        pico.vid = PICO_VID
        return [other, pico] if link.exists() else [other]

    monkeypatch.setattr(list_ports, "comports", comports)
    config = GibseyConfig(dial=DialConfig(serial="auto", scan_interval=0.02, alert_interval=0.0))
    node = Node(tmp_path / "data", config)
    assert node.parts.dial is not None
    async with started(node, mosquitto.url):
        await until(lambda: scanned_on, 10, "a scan for the board")
        assert not node.parts.dial.serial_connected.is_set()  # the FTDI port is not opened
        pty = Pty(link)
        await asyncio.wait_for(node.parts.dial.serial_connected.wait(), 10)
        assert node.parts.dial.serial_port == str(link)
        pty.unplug()
    assert scanned_on and "MainThread" not in scanned_on


async def test_a_retained_frame_is_no_turn(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """A frame the broker retained (a Pico W publishing with the retain flag, or anyone on the
    broker) is handed over at every subscribe: an old turn, ignored and counted, never performed
    again at each start of the node (found by the field sweep: it was, once per start)."""
    node = Node(tmp_path / "data", GibseyConfig(dial=DialConfig(serial="off")))
    bridge = node.parts.dial
    assert bridge is not None
    pico = await collector_factory(mosquitto.port)
    ghost = df.rotate(7, 5, 2, 1).strip()
    await pico.client.publish(frame_topic(node.node_id, "ghost"), ghost, qos=1, retain=True)
    col = await collector_factory(mosquitto.port, topic(node.node_id, "glyph/rotated"))
    async with started(node, mosquitto.url) as spine:
        rig = Rig(node, bridge, mosquitto, tmp_path / "no-serial")
        await say_hello_over_mqtt(rig, pico, "hall", 1)  # after the retained frame, if any
        await pico.publish(frame_topic(node.node_id, "hall"), df.rotate(1, 1, 1, 1).strip())
        await col.wait_for(lambda c: c.of_kind("glyph/rotated"))
        assert spine.stats.retained_ignored == 1
    assert "ghost" not in bridge.dials
    assert [p["source"] for p in payloads(col, "glyph/rotated")] == ["hall"]


async def test_a_port_that_will_not_open_is_said_once(
    rig: Rig, collector_factory: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The dial's port is there but another program holds it (a terminal left open on it,
    ModemManager probing it): the node says so once, in a warning and an alert, not at every
    retry, and takes the dial when it is free (found by the field sweep: it said nothing)."""
    import fcntl
    import logging

    caplog.set_level(logging.DEBUG, logger="gibsey.dial")  # the retries are debug lines
    col = await subscribe(rig, collector_factory, "safety/alert")
    master, slave = os.openpty()
    fcntl.flock(slave, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what pyserial's exclusive open takes
    rig.port_link.symlink_to(os.ttyname(slave))
    try:
        await col.wait_for(
            lambda c: any(
                p["reason"] == "dial_port_unavailable" for p in payloads(c, "safety/alert")
            )
        )

        def retried() -> int:  # the tries after the first, each a debug line
            return sum(r.getMessage().startswith("dial: cannot open ") for r in caplog.records)

        await until(lambda: retried() >= 5, 30, "five more tries to open the port")
        said = [r for r in caplog.records if "cannot open the dial's port" in r.getMessage()]
        assert len(said) == 1 and str(rig.port_link) in said[0].getMessage()
        reasons = [p["reason"] for p in payloads(col, "safety/alert")]
        assert reasons.count("dial_port_unavailable") == 1
        assert not rig.bridge.serial_connected.is_set()
        fcntl.flock(slave, fcntl.LOCK_UN)  # the other program lets go
        await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    finally:
        os.close(slave)
        os.close(master)


async def test_a_board_plugged_back_turns_as_its_dial_before_its_next_hello(
    rig: Rig, collector_factory: CollectorFactory
) -> None:
    """A board plugged back sends its boot hello before the node has the port open again (it
    looks every scan_interval): its first turns must be its dial's, not a phantom dial called
    "serial" taking a place and a Home Assistant device (found by the field sweep)."""
    col = await subscribe(rig, collector_factory, "glyph/rotated")
    pty = Pty(rig.port_link)
    await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    pty.write(df.hello(0, "desk", "fw", 1, 0, True) + df.rotate(1, 1, 1, 1))
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 1)
    pty.unplug()
    await asyncio.wait_for(rig.bridge.serial_gone.wait(), 10)
    pty = Pty(rig.port_link)  # its boot hello went out before the port was open: missed
    await until(lambda: rig.bridge.stats.serial_opens == 2, 10, "the serial port reopened")
    pty.write(df.rotate(1, 1, 2, 2))
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 2)
    assert [p["source"] for p in payloads(col, "glyph/rotated")] == ["desk", "desk"]
    assert set(rig.bridge.dials) == {"desk"}
    pty.unplug()


async def test_a_frame_after_one_cut_short_on_the_same_line_is_taken(
    rig: Rig, collector_factory: CollectorFactory
) -> None:
    """A board reset mid-line sends its boot hello right after the cut frame, with no newline
    between: the hello (its dial id) and the turn after it must be taken, the cut frame counted
    (found by the field sweep: the whole line was dropped as truncated, hello and all)."""
    col = await subscribe(rig, collector_factory, "glyph/rotated")
    pty = Pty(rig.port_link)
    await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    cut = df.rotate(7, 1, 2, 9)[:14]  # no newline: the board reset here
    pty.write(cut + df.hello(0, "porch", "fw", 1, 0, True) + df.rotate(1, 1, 3, 1))
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 1)
    assert [(p["source"], p["rotation"]) for p in payloads(col, "glyph/rotated")] == [("porch", 3)]
    assert rig.bridge.stats.truncated == 1 and rig.bridge.stats.corrupt == 0
    assert set(rig.bridge.dials) == {"porch"}
    pty.unplug()


async def test_a_flood_of_frames_is_dropped_at_the_bridge_and_other_turns_are_performed(
    rig: Rig, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester): 40,000 valid turn frames in 4 s on the serial port. Each was
    throttled at the ritual, but published first (its turn, its dial event, its state): the
    node's outbox overflowed and dropped 7 of 8 other visitors' rituals. Must hold: a turn over
    the dial's bound (the node's per-source one: 20/s, a burst of 200) publishes nothing and is
    counted `throttled`; what is published is only what was admitted; a visitor's turns over
    MQTT during the flood are each performed and announced."""
    from tests.events import raw_event

    col = await subscribe(rig, collector_factory, "glyph/rotated", "ritual/performed")
    pty = Pty(rig.port_link)
    await asyncio.wait_for(rig.bridge.serial_connected.wait(), 10)
    pty.write(df.hello(0, "dial7", "gdial-1.0.0", 2, 0, True))
    flood = 5000
    frames = "".join(df.rotate(n, 2, n % 4, n) for n in range(1, flood + 1))
    loop = asyncio.get_running_loop()
    began = loop.time()
    writing = asyncio.create_task(asyncio.to_thread(pty.write, frames))
    for n in range(8):
        turn = raw_event(rig.nid, "glyph/rotated", {"symbol": 5, "rotation": 1, "source": f"v{n}"})
        await col.publish(topic(rig.nid, "glyph/rotated"), turn)
    await writing
    s = rig.bridge.stats
    await until(lambda: s.rotations + s.throttled == flood, 30, "every frame taken")
    took = loop.time() - began
    per_source = rig.node.config.node.visitor_inputs_per_source_per_second
    assert s.rotations <= per_source * 10 + per_source * took + 1  # a burst, then the rate
    assert s.throttled == flood - s.rotations > 0

    def visitors(c: Collector) -> int:
        return sum(e["actor"] == "visitor" for e in c.of_kind("ritual/performed"))

    await col.wait_for(lambda c: visitors(c) == 8)
    await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) >= s.rotations + 8)
    dial_turns = [e for e in col.of_kind("glyph/rotated") if e["actor"] == "dial"]
    assert len(dial_turns) == s.rotations  # nothing published for a throttled frame
