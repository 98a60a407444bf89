"""An outside tester's audit of the Home Assistant discovery, with a real Mosquitto and a real
node (in-process): each finding, as Home Assistant and a gallery's broker would show it.

1. A dial from before a restart stayed on the broker forever (its retained state and device
   config), shown available: the node now learns them at connect and clears those not heard
   again within `forget_after`, within `max_dials`, giving a new dial their place first.
2. An unplugged dial never went unavailable: its sensors now expire.
3. "Dial X frames lost" was the whole bridge's count: each dial's state now carries its own.
4. Dial ids `x-1` and `x_1` were one Home Assistant device: the id is used as it is.
5. The node's last will lacked the fields its sensors' templates read: they now fall back.
6. Every dial carried the node's device: each is now a device of its own, through the node's.
7. "Dial X position" showed the glyph state: its name and value now agree.

Templates are rendered with Jinja2 as Home Assistant renders them (`value_json`), strictly: a
field a template reads and the document lacks is an error here, a warning in Home Assistant.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jinja2

from gibsey.core.topics import status_topic
from gibsey.dialcore import frame as df
from gibsey.dialcore.config import DEFAULTS as FIRMWARE_DEFAULTS
from gibsey.harness.waiting import until
from gibsey.node.dial.bridge import (
    EXPIRE_AFTER_S,
    HELLO_INTERVAL_S,
    dial_discovery_messages,
    dial_uid,
    frame_topic,
    state_topic,
)
from gibsey.node.gateway.metrics import NodeCollector
from gibsey.node.spine.discovery import device_topic, node_identifier
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory
from tests.test_dial_bridge import Rig, say_hello_over_mqtt
from tests.test_dial_ids import dial_node

PREFIX = "homeassistant"
STRICT = jinja2.Environment(undefined=jinja2.StrictUndefined)


def render(template: str, doc: dict[str, Any]) -> str:
    return STRICT.from_string(template).render(value_json=doc)


def config_topic(nid: str, dial_id: str) -> str:
    return device_topic(PREFIX, dial_uid(nid, dial_id))


async def retained_now(factory: CollectorFactory, port: int, *filters: str) -> dict[str, bytes]:
    """What the broker retains on `filters`, as a new client sees it: every retained message
    is sent on the subscription, before a message the same client publishes after it."""
    marker = f"test/marker/{time.monotonic_ns()}"
    col = await factory(port, *filters, marker)
    await col.publish(marker, b"end")
    await col.wait_for(lambda c: (marker, b"end") in c.messages)
    return {t: p for t, p in col.messages if t != marker and p}


async def dial_topics(rig: Rig, factory: CollectorFactory) -> dict[str, bytes]:
    """This node's dials' retained state documents and device configs, once all the node has
    published (the clearing of a forgotten dial included) has reached the broker."""
    assert rig.node.spine is not None
    assert await rig.node.spine.flush(timeout_s=10)
    got = await retained_now(
        factory, rig.broker.port, state_topic(rig.nid, "+"), device_topic(PREFIX, "+")
    )
    return {t: p for t, p in got.items() if t.endswith("/state") or "_dial_" in t}


def dial_ids_retained(msgs: dict[str, bytes]) -> tuple[set[str], set[str]]:
    """(dial ids with a retained state, discovery ids of dials with a retained config)."""
    states = {t.split("/")[4] for t in msgs if t.endswith("/state")}
    configs = {t.split("/")[2] for t in msgs if t.startswith(PREFIX + "/")}
    return states, configs


async def device_config(col: Collector, topic: str, want: Any = bool) -> dict[str, Any]:
    """The last config on `topic` for which `want` holds."""

    def last(c: Collector) -> dict[str, Any] | None:
        docs = [json.loads(p) for t, p in c.messages if t == topic and p]
        return docs[-1] if docs and want(docs[-1]) else None

    doc: dict[str, Any] = await col.wait_for(last)
    return doc


async def state_doc(col: Collector, rig: Rig, dial_id: str, want: Any = bool) -> dict[str, Any]:
    topic = state_topic(rig.nid, dial_id)

    def last(c: Collector) -> dict[str, Any] | None:
        docs = [json.loads(p) for t, p in c.messages if t == topic and p]
        return docs[-1] if docs and want(docs[-1]) else None

    doc: dict[str, Any] = await col.wait_for(last)
    return doc


# -- 1. dials from before a restart ------------------------------------------------------------
async def test_dials_from_before_a_restart_are_cleared_unless_heard_again(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a run of the node with dials `gone` and `back`, then a restart; an old release's
    config of dial `x-1` (under `x_1`) and another node's (`<node>_dial_z`'s dial `y`) retained
    too. In the new run only `back` says hello again. Must hold: the new run learns `gone`,
    `back` and `x_1` at connect and clears nothing before `forget_after`; once that has passed
    (an injected clock), `gone`'s and `x_1`'s retained topics are cleared, `back`'s and the
    other node's stay."""
    async with dial_node(tmp_path, mosquitto) as rig:
        nid = rig.nid
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "gone", 0)
        await say_hello_over_mqtt(rig, pico, "back", 1)
        before = await dial_topics(rig, collector_factory)
    old_release = next(
        m.payload
        for m in dial_discovery_messages(nid, "x-1", PREFIX)
        if m.retain and m.payload  # what an old release said of x-1 (its topics: x-1's)
    )
    other = f"{nid}_dial_z"
    foreign = next(
        m.payload for m in dial_discovery_messages(other, "y", PREFIX) if m.retain and m.payload
    )
    client = (await collector_factory(mosquitto.port)).client
    await client.publish(config_topic(nid, "x_1"), old_release, qos=1, retain=True)
    await client.publish(config_topic(other, "y"), foreign, qos=1, retain=True)
    assert dial_ids_retained(before) == (
        {"gone", "back"},
        {dial_uid(nid, "gone"), dial_uid(nid, "back")},
    )

    async with dial_node(tmp_path, mosquitto) as rig:
        assert rig.nid == nid
        bridge = rig.bridge
        await until(lambda: bridge._unheard >= {"gone", "back", "x_1"}, 10, "the dials learned")
        assert "y" not in bridge._heard and "z_dial_y" not in bridge._heard  # not this node's
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "back", 1)
        assert bridge._unheard == {"gone", "x_1"}
        bridge.forget_leftovers(now=time.monotonic())  # not silent for forget_after yet
        assert set(bridge._heard) == {"gone", "back", "x_1"} and bridge.stats.forgotten == 0

        bridge.forget_leftovers(now=time.monotonic() + bridge.config.forget_after)
        assert set(bridge._heard) == {"back"} and bridge.stats.forgotten == 2
        states, configs = dial_ids_retained(await dial_topics(rig, collector_factory))
        assert states == {"back"}
        assert configs == {dial_uid(nid, "back"), dial_uid(other, "y")}


async def test_dials_from_before_give_a_new_dial_their_place_and_stay_within_max_dials(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: three dials in a run, then a restart with `max_dials = 2`, then a new dial's
    hello at once (long before `forget_after`). Must hold: never more than two dials kept (the
    third's retained topics cleared at once); the new dial is taken, not refused, in the place
    of one from before (whose retained topics are cleared); the other goes after forget_after."""
    async with dial_node(tmp_path, mosquitto) as rig:
        pico = await collector_factory(mosquitto.port)
        for i, dial_id in enumerate(("a", "b", "c")):
            await say_hello_over_mqtt(rig, pico, dial_id, i)
        await dial_topics(rig, collector_factory)

    async with dial_node(tmp_path, mosquitto, max_dials=2) as rig:
        bridge = rig.bridge
        await until(lambda: len(bridge._unheard) == 2, 10, "two dials learned")
        await until(lambda: bridge.stats.forgotten >= 1, 10, "the third one cleared")
        assert len(bridge._heard) == 2
        # Its two retained topics (state, Home Assistant config) are one dial cleared once,
        # whichever the broker handed over first, and again if handed over again.
        third = ({"a", "b", "c"} - set(bridge._heard)).pop()
        prefix = rig.node.config.node.discovery_prefix
        config = next(
            m
            for m in dial_discovery_messages(rig.nid, third, prefix)
            if m.topic.endswith(f"{dial_uid(rig.nid, third)}/config") and m.payload
        )
        for _ in range(2):
            bridge.on_retained_state(state_topic(rig.nid, third), b"{}")
            bridge.on_retained_config(config.topic, config.payload)
        assert bridge.stats.forgotten == 1
        states, _ = dial_ids_retained(await dial_topics(rig, collector_factory))
        assert states == bridge._unheard  # the third's state is gone from the broker

        pico = await collector_factory(mosquitto.port)

        async def hello_until_taken_or_refused() -> None:
            while "new" not in bridge.dials and not bridge.stats.refused:
                hello = df.hello(0, "new", "fw", 3, 0, True).strip()
                await pico.publish(frame_topic(rig.nid, "new"), hello)
                await asyncio.sleep(0.05)  # (the frame subscription may not be on yet)

        await asyncio.wait_for(hello_until_taken_or_refused(), 10)
        assert bridge.stats.refused == 0 and "new" in bridge.dials
        assert len(bridge._heard) == 2 and len(bridge._unheard) == 1
        bridge.forget_leftovers(now=time.monotonic() + bridge.config.forget_after)
        states, configs = dial_ids_retained(await dial_topics(rig, collector_factory))
        assert set(bridge._heard) == {"new"}
        assert states == {"new"} and configs == {dial_uid(rig.nid, "new")}


# -- 2. an unplugged dial goes unavailable -----------------------------------------------------
async def test_a_dial_that_stops_saying_hello_expires_in_home_assistant(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a dial's hello and a heartbeat hello (not a boot one), as the firmware sends every
    `heartbeat_s`. Must hold: every sensor of the dial's device config expires after a few
    heartbeats, and each hello renews the state (so a live dial never expires)."""
    assert HELLO_INTERVAL_S == FIRMWARE_DEFAULTS["heartbeat_s"]
    assert 3 * HELLO_INTERVAL_S <= EXPIRE_AFTER_S <= 6 * HELLO_INTERVAL_S
    async with dial_node(tmp_path, mosquitto) as rig:
        col = await collector_factory(
            mosquitto.port, config_topic(rig.nid, "hall"), state_topic(rig.nid, "hall")
        )
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "hall", 0)
        config = await device_config(col, config_topic(rig.nid, "hall"))
        sensors = [c for c in config["components"].values() if c["platform"] == "sensor"]
        assert sensors and all(c["expire_after"] == EXPIRE_AFTER_S for c in sensors)
        view = rig.bridge.dials["hall"]
        hellos = view.stats.hellos
        heartbeat = df.hello(view.frames, "hall", "fw", 0, 0, False)
        await pico.publish(frame_topic(rig.nid, "hall"), heartbeat.strip())
        await state_doc(col, rig, "hall", lambda d: d["stats"]["hellos"] == hellos + 1)


# -- 3. each dial's own counts -------------------------------------------------------------------
async def test_each_dial_state_carries_its_own_counts(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: dial `a` loses three frames on Wi-Fi, dial `b` none. Must hold: `a`'s state says
    3 lost, `b`'s 0 (what its "frames lost" sensor shows); the bridge's totals (/metrics) 3."""
    async with dial_node(tmp_path, mosquitto) as rig:
        col = await collector_factory(mosquitto.port, state_topic(rig.nid, "+"))
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "a", 0)
        await say_hello_over_mqtt(rig, pico, "b", 1)
        await pico.publish(frame_topic(rig.nid, "a"), df.rotate(4, 0, 1, 1).strip())  # 1..3 lost
        await pico.publish(frame_topic(rig.nid, "b"), df.rotate(1, 1, 1, 1).strip())
        a = await state_doc(col, rig, "a", lambda d: d["rotation"] == 1)  # after its turn
        b = await state_doc(col, rig, "b", lambda d: d["rotation"] == 1)
        assert (a["stats"]["lost"], b["stats"]["lost"]) == (3, 0)
        assert "refused" not in a["stats"]  # the node's, not a dial's
        msgs = dial_discovery_messages(rig.nid, "b", PREFIX)
        config = next(m for m in msgs if m.retain and m.payload)  # the device config
        template = json.loads(config.payload)["components"]["frames_lost"]["value_template"]
        assert render(template, b) == "0"
        # The bridge's totals are the sums (every frame here was a or b's).
        assert rig.bridge.stats.lost == 3
        assert rig.bridge.stats.frames == a["stats"]["frames"] + b["stats"]["frames"]
        metrics = {f.name: f for f in NodeCollector(rig.node, None, 1)._dial()}  # type: ignore[arg-type]
        lost = [s.value for s in metrics["gibsey_dial"].samples if s.labels == {"what": "lost"}]
        assert lost == [3]


# -- 4. ids that differ only by - and _ ----------------------------------------------------------
async def test_dial_ids_differing_by_dash_and_underscore_are_two_devices(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: dials `x-1` and `x_1`. Must hold: two device configs on the broker, each with
    its own unique ids and naming its own dial's topics."""
    async with dial_node(tmp_path, mosquitto) as rig:
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "x-1", 0)
        await say_hello_over_mqtt(rig, pico, "x_1", 1)
        msgs = await dial_topics(rig, collector_factory)
        configs = {t: json.loads(p) for t, p in msgs.items() if t.startswith(PREFIX + "/")}
        assert set(configs) == {config_topic(rig.nid, "x-1"), config_topic(rig.nid, "x_1")}
        unique_ids: set[str] = set()
        for dial_id in ("x-1", "x_1"):
            components = configs[config_topic(rig.nid, dial_id)]["components"]
            assert components["position"]["state_topic"] == state_topic(rig.nid, dial_id)
            unique_ids |= {c["unique_id"] for c in components.values()}
        assert len(unique_ids) == 8


# -- 5. the last will and the node's sensors -----------------------------------------------------
async def test_the_node_sensors_templates_read_its_last_will_without_error(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: the node's connection dropped without a goodbye, so the broker publishes its last
    will on the status topic its sensors read. Must hold: every template of the node's device
    config renders the will (strictly: no field read that it lacks); the numeric sensors say
    `None` (Home Assistant: unknown), the availability `offline`; the online document's still
    render its numbers."""
    async with dial_node(tmp_path, mosquitto) as rig:
        nid = rig.nid
        status = status_topic(nid)
        node_config = device_topic(PREFIX, node_identifier(nid))
        col = await collector_factory(mosquitto.port, status, node_config)
        config = await device_config(col, node_config)
        online = await state_doc_of(col, status, "online")
        assert rig.node.spine is not None and rig.node.spine._conn is not None
        rig.node.spine._conn.abort("test: no goodbye")  # the broker publishes the will
        will = await state_doc_of(col, status, "offline")
        assert will["node"] == nid
        for name, component in config["components"].items():
            value = render(component["value_template"], will)
            assert value == ("offline" if name == "status" else "None"), (name, value)
            if "availability_template" in component:
                assert render(component["availability_template"], will) == "offline"
            if name != "status":
                float(render(component["value_template"], online))  # a number while online


async def state_doc_of(col: Collector, topic: str, state: str) -> dict[str, Any]:
    def last(c: Collector) -> dict[str, Any] | None:
        docs = [json.loads(p) for t, p in c.messages if t == topic and p]
        return next((d for d in reversed(docs) if d["state"] == state), None)

    doc: dict[str, Any] = await col.wait_for(last)
    return doc


# -- 6. each dial its own device -----------------------------------------------------------------
async def test_each_dial_is_a_device_of_its_own_through_the_node(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a dial that first turns (the node restarted while it ran: no hello yet), then
    says its heartbeat hello with its firmware. Must hold: its device config names a device of
    its own (its identifiers, a name with its id, `via_device` the node's identifier), and its
    firmware as `sw_version` once the hello has said it."""
    async with dial_node(tmp_path, mosquitto) as rig:
        topic = config_topic(rig.nid, "hall")
        col = await collector_factory(mosquitto.port, topic)
        pico = await collector_factory(mosquitto.port)

        async def turn() -> None:
            while "hall" not in rig.bridge.dials:  # until the node's frame subscription is on
                await pico.publish(frame_topic(rig.nid, "hall"), df.rotate(0, 0, 1, 1).strip())
                await asyncio.sleep(0.05)

        await asyncio.wait_for(turn(), 10)
        first = (await device_config(col, topic))["device"]
        assert first["identifiers"] == [dial_uid(rig.nid, "hall")]
        assert first["via_device"] == node_identifier(rig.nid)
        assert "hall" in first["name"] and "sw_version" not in first
        hello = df.hello(rig.bridge.dials["hall"].frames, "hall", "gdial-9.9.9", 0, 1, False)
        await pico.publish(frame_topic(rig.nid, "hall"), hello.strip())
        device = (await device_config(col, topic, lambda d: "sw_version" in d["device"]))["device"]
        assert device == {**first, "sw_version": "gdial-9.9.9"}


# -- 7. the state sensor's name and value --------------------------------------------------------
async def test_the_dial_state_sensor_is_named_for_what_it_shows(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a dial turned. Must hold: its sensor that shows the glyph state (symbol * 4 +
    rotation) is named so, has no `state_class` (a code, nothing to graph), and every template
    of the dial's config renders its real state document (the encoder position an attribute)."""
    async with dial_node(tmp_path, mosquitto) as rig:
        col = await collector_factory(
            mosquitto.port, config_topic(rig.nid, "hall"), state_topic(rig.nid, "hall")
        )
        pico = await collector_factory(mosquitto.port)
        await say_hello_over_mqtt(rig, pico, "hall", 2)
        await pico.publish(frame_topic(rig.nid, "hall"), df.rotate(1, 2, 3, 7).strip())
        doc = await state_doc(col, rig, "hall", lambda d: d["position"] == 7)
        config = await device_config(col, config_topic(rig.nid, "hall"))
        sensor = config["components"]["position"]
        assert sensor["name"] == "State" and "state_class" not in sensor
        assert render(sensor["value_template"], doc) == str(2 * 4 + 3) == str(doc["state"])
        attributes = json.loads(render(sensor["json_attributes_template"], doc))
        assert attributes["position"] == 7
        for component in config["components"].values():
            if component["platform"] == "sensor":
                render(component["value_template"], doc)
