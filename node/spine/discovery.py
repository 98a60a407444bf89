"""Home Assistant MQTT discovery, so a dashboard finds the node with no hand configuration.

Home Assistant's current schema is device-based: one retained message per device (here: the
node, and each of its dials) under `<prefix>/device/<id>/config`, holding the `device`, the
`origin` (who sent it) and a `components` map, each component with its `platform` and
`unique_id`, and `default_entity_id` (`"<platform>.<id>"`) where the old per-entity schema had
`object_id` (deprecated in Home Assistant 2025.10, gone in 2026.4).

The node's sensors all read its one retained status document (`gibsey/v1/<node>/node/status`)
with a value template, and use the same topic for availability: the broker's last will turns it
to `offline` when the node dies, so the dashboard greys the node out by itself. The will is only
`{"state": "offline", "node": ...}` (fixed at connect, it cannot carry the last counts), so each
template of a field the will lacks falls back to `none`: Home Assistant then reads the sensor as
unknown, with no template warning and no made-up 0 in a counter's history.

Releases before this one sent one retained config per entity (`<prefix>/sensor/<node>/<object>/
config`). Each announcement first tells Home Assistant to migrate those (`{"migrate_discovery":
true}`: it lets go of the old discovery without deleting the entity), then sends the device
config (the same `unique_id`s, so history and customisations stay), then clears the old retained
topics. Home Assistant says it is back with its birth message (`<prefix>/status` = `online`);
the node then announces again, so entities never vanish after a Home Assistant restart on a
broker that forgot retained messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gibsey import __version__
from gibsey.core.topics import status_topic

ORIGIN: dict[str, str] = {"name": "gibsey-node", "sw_version": __version__}
HA_ONLINE = b"online"  # Home Assistant's birth payload on <prefix>/status

# A numeric sensor's template rendering `None` leaves the sensor unknown (Home Assistant's MQTT
# sensor); an undefined field would be a template warning on every offline document.
SENSORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("status", "Status", {"value_template": "{{ value_json.state }}", "icon": "mdi:access-point"}),
    (
        "events_per_s",
        "Events per second",
        {
            "value_template": "{{ value_json.events_per_s | default(none) }}",
            "unit_of_measurement": "events/s",
            "state_class": "measurement",
            "icon": "mdi:pulse",
        },
    ),
    (
        "uptime",
        "Uptime",
        {
            "value_template": (
                "{{ value_json.uptime_s | round(0) if value_json.uptime_s is defined else none }}"
            ),
            "unit_of_measurement": "s",
            "device_class": "duration",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        },
    ),
    (
        "rejected",
        "Rejected inputs",
        {
            "value_template": "{{ value_json.rejected_total | default(none) }}",
            "state_class": "total_increasing",
            "entity_category": "diagnostic",
            "icon": "mdi:shield-alert",
        },
    ),
)


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    topic: str
    payload: bytes
    retain: bool


def ha_status_topic(prefix: str) -> str:
    """Where Home Assistant publishes `online` when it (re)starts: its birth message."""
    return f"{prefix}/status"


def node_identifier(node_id: str) -> str:
    """The node's Home Assistant device identifier (its dials' devices name it as `via_device`)."""
    return f"gibsey_{node_id}"


def device_config(node_id: str) -> dict[str, Any]:
    """The node as a Home Assistant device, with its own sensors; each dial is a device of its
    own, connected through this one (node/dial/bridge.py)."""
    return {
        "identifiers": [node_identifier(node_id)],
        "name": f"Gibsey {node_id}",
        "manufacturer": "Gibsey",
        "model": "Gibsey node",
        "sw_version": __version__,
    }


def device_topic(prefix: str, discovery_id: str) -> str:
    """Where a device's retained config is (an empty retained payload there removes it)."""
    return f"{prefix}/device/{discovery_id}/config"


def availability_config(node_id: str) -> dict[str, Any]:
    """An entity is available while the node's retained status document says `online`."""
    return {
        "availability_topic": status_topic(node_id),
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def component(platform: str, unique_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """One entity of a device config: its platform, unique id and default entity id."""
    return {
        "platform": platform,
        "unique_id": unique_id,
        "default_entity_id": f"{platform}.{unique_id}",
        **config,
    }


def device_messages(
    prefix: str,
    discovery_id: str,
    device: dict[str, Any],
    components: dict[str, dict[str, Any]],
    legacy_topics: list[str],
) -> list[DiscoveryMessage]:
    """Migrate the old per-entity configs, send the device config, clear the old topics."""
    doc = {"device": device, "origin": ORIGIN, "components": components}
    migrate = json.dumps({"migrate_discovery": True}).encode()
    return [
        *(DiscoveryMessage(t, migrate, retain=False) for t in legacy_topics),
        DiscoveryMessage(device_topic(prefix, discovery_id), json.dumps(doc).encode(), True),
        *(DiscoveryMessage(t, b"", retain=True) for t in legacy_topics),
    ]


def discovery_messages(node_id: str, prefix: str = "homeassistant") -> list[DiscoveryMessage]:
    """What announces the node's own sensors, in the order they must be published."""
    components: dict[str, dict[str, Any]] = {}
    for object_id, name, extra in SENSORS:
        components[object_id] = component(
            "sensor",
            f"gibsey_{node_id}_{object_id}",
            {
                "name": name,
                "state_topic": status_topic(node_id),
                # The status sensor itself stays available so it can show "offline".
                **({} if object_id == "status" else availability_config(node_id)),
                **extra,
            },
        )
    legacy = [f"{prefix}/sensor/{node_id}/{object_id}/config" for object_id, _, _ in SENSORS]
    discovery_id = node_identifier(node_id)
    return device_messages(prefix, discovery_id, device_config(node_id), components, legacy)
