"""Home Assistant MQTT discovery, so a dashboard finds the node with no hand configuration.

Each sensor gets a retained config message under `<prefix>/sensor/<node>/<object>/config`. All
of them read the node's one retained status document (`gibsey/v1/<node>/node/status`) with a
value template, and use the same topic for availability: the broker's last will turns it to
`offline` when the node dies, so the dashboard greys the node out by itself.
"""

from __future__ import annotations

import json
from typing import Any

from gibsey import __version__
from gibsey.core.topics import status_topic

SENSORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("status", "Status", {"value_template": "{{ value_json.state }}", "icon": "mdi:access-point"}),
    (
        "events_per_s",
        "Events per second",
        {
            "value_template": "{{ value_json.events_per_s }}",
            "unit_of_measurement": "events/s",
            "state_class": "measurement",
            "icon": "mdi:pulse",
        },
    ),
    (
        "uptime",
        "Uptime",
        {
            "value_template": "{{ value_json.uptime_s | round(0) }}",
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
            "value_template": "{{ value_json.rejected_total }}",
            "state_class": "total_increasing",
            "entity_category": "diagnostic",
            "icon": "mdi:shield-alert",
        },
    ),
)


def device_config(node_id: str) -> dict[str, Any]:
    """The node as a Home Assistant device: its own sensors and its dials' entities name it."""
    return {
        "identifiers": [f"gibsey_{node_id}"],
        "name": f"Gibsey {node_id}",
        "manufacturer": "Gibsey",
        "model": "Gibsey node",
        "sw_version": __version__,
    }


def availability_config(node_id: str) -> dict[str, Any]:
    """An entity is available while the node's retained status document says `online`."""
    return {
        "availability_topic": status_topic(node_id),
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def discovery_messages(node_id: str, prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity of this node."""
    device = device_config(node_id)
    out: list[tuple[str, bytes]] = []
    for object_id, name, extra in SENSORS:
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"gibsey_{node_id}_{object_id}",
            "object_id": f"gibsey_{node_id}_{object_id}",
            "state_topic": status_topic(node_id),
            # The status sensor itself stays available so it can show "offline".
            **({} if object_id == "status" else availability_config(node_id)),
            "device": device,
            **extra,
        }
        out.append((f"{prefix}/sensor/{node_id}/{object_id}/config", json.dumps(config).encode()))
    return out
