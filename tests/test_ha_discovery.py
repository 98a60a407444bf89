"""Home Assistant discovery as Home Assistant reads it today (issue 17, item 8).

The rules below are Home Assistant's MQTT integration documentation, "Device discovery payload"
and the sensor and event platforms (https://www.home-assistant.io/integrations/mqtt/): one
retained config per device under `<prefix>/device/<id>/config`; `device` and `origin` (with a
`name`) at its root and nowhere else; a `components` map whose entries each carry `platform` and
`unique_id`; `object_id` is gone (deprecated in 2025.10, removed in Core 2026.4), replaced by
`default_entity_id` = "<platform>.<id>"; a sensor needs `state_topic`, an event entity
`state_topic` and a non-empty `event_types`. Home Assistant announces a restart with its birth
message (`<prefix>/status` = `online`); a node must then announce itself again.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from gibsey.harness.waiting import until
from gibsey.node.daemon import HA_REANNOUNCE_S
from gibsey.node.dial.bridge import dial_discovery_messages
from gibsey.node.spine.discovery import DiscoveryMessage, discovery_messages
from tests.conftest import Collector, CollectorFactory, RunningNode

DEVICE_TOPIC = re.compile(r"^homeassistant/device/[a-zA-Z0-9_-]+/config$")
SHARED_ROOT = {
    "device",
    "origin",
    "components",
    "availability",
    "availability_topic",
    "availability_template",
    "availability_mode",
    "payload_available",
    "payload_not_available",
    "state_topic",
    "command_topic",
    "qos",
    "encoding",
}
REQUIRED = {"sensor": {"state_topic"}, "event": {"state_topic", "event_types"}}
DEPRECATED = {"object_id"}


def _device_configs(msgs: list[DiscoveryMessage]) -> list[tuple[str, dict[str, Any]]]:
    return [(m.topic, json.loads(m.payload)) for m in msgs if "/device/" in m.topic]


def _check_device_config(topic: str, doc: dict[str, Any]) -> None:
    assert DEVICE_TOPIC.match(topic), topic
    assert set(doc) <= SHARED_ROOT, set(doc) - SHARED_ROOT
    assert doc["device"]["identifiers"], "a device needs identifiers"
    assert doc["origin"]["name"], "origin needs a name"
    assert doc["components"], "at least one component"
    for cid, comp in doc["components"].items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", cid), cid
        assert not DEPRECATED & set(comp), (cid, DEPRECATED & set(comp))
        assert not {"device", "origin"} & set(comp), "device and origin are root-only"
        platform = comp["platform"]
        assert REQUIRED[platform] <= set(comp), (cid, REQUIRED[platform] - set(comp))
        assert comp["unique_id"]
        assert comp["default_entity_id"] == f"{platform}.{comp['unique_id']}"
        if platform == "event":
            assert comp["event_types"] and all(isinstance(t, str) for t in comp["event_types"])


@pytest.mark.parametrize("node_id", ["n1", "gallery-node-7"])
def test_the_node_and_its_dial_follow_the_current_device_schema(node_id: str) -> None:
    """Tried: every discovery message of a node and of a dial. Must hold: exactly one device
    config each, valid under the rules above; the old per-entity topics only migrated and
    cleared (never given a config again)."""
    for msgs in (
        discovery_messages(node_id, "homeassistant"),
        dial_discovery_messages(node_id, "hall-1", "homeassistant"),
    ):
        devices = _device_configs(msgs)
        assert len(devices) == 1
        _check_device_config(*devices[0])
        legacy = [m for m in msgs if "/device/" not in m.topic]
        assert {m.payload for m in legacy if not m.retain} == {b'{"migrate_discovery": true}'}
        assert {m.payload for m in legacy if m.retain} == {b""}
    dial = _device_configs(dial_discovery_messages(node_id, "hall-1", "homeassistant"))[0][1]
    node = _device_configs(discovery_messages(node_id, "homeassistant"))[0][1]
    # The dial is a device of its own (deletable alone in Home Assistant), through the node's.
    assert dial["device"]["identifiers"] != node["device"]["identifiers"]
    assert dial["device"]["via_device"] == node["device"]["identifiers"][0]
    assert dial["components"]["turn"]["platform"] == "event"


async def test_home_assistant_restarting_gets_the_node_announced_again(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried: the broker forgets the node's retained device config (a broker without
    persistence), an old per-entity config is still retained, then Home Assistant restarts and
    sends its birth message. Must hold: the node sends its device config again, and migrates
    and clears the old per-entity config."""
    nid = running_node.node_id
    device_topic = f"homeassistant/device/gibsey_{nid}/config"
    legacy_topic = f"homeassistant/sensor/{nid}/status/config"
    col: Collector = await collector_factory(running_node.port, device_topic, legacy_topic)
    await col.wait_for(lambda c: any(t == device_topic and p for t, p in c.messages))
    await col.client.publish(device_topic, b"", qos=1, retain=True)  # forgotten
    await col.client.publish(legacy_topic, b'{"name": "old"}', qos=1, retain=True)
    await col.wait_for(lambda c: (legacy_topic, b'{"name": "old"}') in c.messages)
    seen = len(col.messages)
    await col.client.publish("homeassistant/status", b"online", qos=1)

    def after_birth(c: Collector) -> list[tuple[str, bytes]]:
        new = c.messages[seen:]
        if any(t == device_topic and p for t, p in new) and (legacy_topic, b"") in new:
            return new
        return []

    new = await col.wait_for(after_birth)
    legacy = [p for t, p in new if t == legacy_topic]
    assert legacy == [b'{"migrate_discovery": true}', b""]
    doc = json.loads(next(p for t, p in new if t == device_topic))
    _check_device_config(device_topic, doc)


async def test_other_home_assistant_status_payloads_change_nothing(
    running_node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: Home Assistant's last will (`offline`) and garbage on its status topic. Must hold:
    no announcement (the node answers only `online`, with its surrounding whitespace allowed)."""
    node = running_node.node
    assert node.spine is not None
    sent: list[str] = []
    monkeypatch.setattr(node.spine, "publish", lambda topic, *a, **k: sent.append(topic))
    for payload in (b"offline", b"\xff\xfe", b"{}", b""):
        node._on_home_assistant("homeassistant/status", payload)
    assert sent == []
    node._on_home_assistant("homeassistant/status", b"online\n")
    device = f"homeassistant/device/gibsey_{node.node_id}/config"
    await until(lambda: device in sent, 5.0, "the announcement")


async def test_a_flood_of_births_is_one_announcement(
    running_node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried (any client may publish it): 200 birth messages at once, which made 2,001 retained
    messages. Must hold: one announcement now; births after it, however many, one more once
    HA_REANNOUNCE_S has passed since."""
    node = running_node.node
    announced: list[float] = []
    real = node._reannounce_to_home_assistant

    def counted() -> None:
        announced.append(asyncio.get_running_loop().time())
        real()

    monkeypatch.setattr(node, "_reannounce_to_home_assistant", counted)
    for _ in range(200):
        node._on_home_assistant("homeassistant/status", b"online")
    await until(lambda: announced, 5.0, "the announcement")
    for _ in range(200):
        node._on_home_assistant("homeassistant/status", b"online")
    assert len(announced) == 1
    await until(lambda: len(announced) == 2, HA_REANNOUNCE_S + 5.0, "the next one")
    assert announced[1] - announced[0] >= HA_REANNOUNCE_S - 0.01
