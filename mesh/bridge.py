"""Mosquitto bridge configuration: forward chosen topics of this node's broker to a central one.

Beyond one room (a venue with several galleries, a fleet), Mosquitto's own bridge carries MQTT
topics from each node's broker to a central broker; this module only writes its configuration
(`gibsey mesh bridge-config`), for `/etc/mosquitto/conf.d/`. Keys in gibsey.toml:

    [mesh.bridge]
    central = "venue-hub.local:1883"           # the central broker, HOST:PORT
    topics = ["gibsey/v1/<node>/#"]           # patterns to forward; <node> is this node's id
    direction = "out"                         # out | in | both
    qos = 1

The default forwards every event of this node (`gibsey/v1/<node_id>/#`) out with QoS 1. The
topic tree already carries the node id, so events of many nodes never collide centrally.
`cleansession false` with a fixed `remote_clientid` lets the central broker queue QoS 1 messages
across a dropped link; Mosquitto itself reconnects (`restart_timeout`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from gibsey.core.config import ConfigSection, check_host


class BridgeConfig(ConfigSection):
    """`[mesh.bridge]`; `render` checks the values again: the command line may also give them."""

    central: str = ""
    topics: Annotated[list[str], Field(min_length=1, max_length=100)] = Field(
        default_factory=lambda: ["gibsey/v1/<node>/#"]
    )
    direction: Literal["out", "in", "both"] = "out"
    qos: Literal[0, 1, 2] = 1

    @field_validator("central")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"central {value!r}: expected HOST:PORT, the port 1..65535")
            check_host(host, f"central {value!r}: host")
        return value

    @field_validator("topics")
    @classmethod
    def _topic_filters(cls, value: list[str]) -> list[str]:
        for topic in value:
            if not topic or any(c.isspace() for c in topic) or len(topic) > 1024:
                raise ValueError(f"topic {topic!r}: 1 to 1024 characters, no spaces")
        return value


def render(node_id: str, cfg: BridgeConfig) -> str:
    """The bridge section of mosquitto.conf; raises ValueError on a bad setting."""
    host, sep, port = cfg.central.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"central broker {cfg.central!r}: expected HOST:PORT (--central, or [mesh.bridge] "
            "central in gibsey.toml)"
        )
    if cfg.direction not in ("out", "in", "both"):
        raise ValueError(f"direction {cfg.direction!r}: expected out, in or both")
    if cfg.qos not in (0, 1, 2):
        raise ValueError(f"qos {cfg.qos}: expected 0, 1 or 2")
    lines = [
        f"# Gibsey node {node_id}: forward chosen topics to the central broker.",
        "# Written by `gibsey mesh bridge-config`; Mosquitto's own bridge does the work.",
        f"connection gibsey-{node_id}",
        f"address {host}:{port}",
    ]
    for pattern in cfg.topics:
        topic = pattern.replace("<node>", node_id)
        if any(c.isspace() for c in topic) or not topic:
            raise ValueError(f"topic {topic!r} may not be empty or contain spaces")
        lines.append(f"topic {topic} {cfg.direction} {cfg.qos}")
    lines += [
        f"remote_clientid gibsey-bridge-{node_id}",
        "cleansession false",
        "start_type automatic",
        "restart_timeout 2 30",
        "try_private true",
        "notifications true",
        # Outside gibsey/v1/: the router would reject it as an unknown event kind.
        f"notification_topic gibsey/bridge/{node_id}/state",
        "",
    ]
    return "\n".join(lines)
