"""Put one event on the node's spine from a short-lived command (`gibsey ledger gift`, ...).

The command is not the daemon, so it opens its own MQTT connection to the node's broker (the
configured one, else where the embedded broker listens), publishes with QoS 1, waits for the
broker's acknowledgement, and disconnects. If no broker answers, the command's real work (a
ledger entry, a table change) is already durable; the announcement is what is missing, and the
caller says so.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.core.config import load_config
from gibsey.core.envelope import Payload, encode_event
from gibsey.core.identity import load_or_create
from gibsey.core.topics import topic_for
from gibsey.node.spine.spine import parse_broker_url

TIMEOUT = 3.0


def broker_url(data_dir: Path) -> str:
    config = load_config(data_dir)
    return config.broker or f"mqtt://{config.embedded_host}:{config.embedded_port}"


def announce(
    data_dir: Path, kind: str, payload: Payload, *, actor: str, lamport: int
) -> str | None:
    """Publish one event; None when the broker acknowledged it, else why it was not sent."""
    identity = load_or_create(data_dir)
    url = broker_url(data_dir)
    host, port = parse_broker_url(url)
    event = encode_event(identity.node_id, kind, payload, lamport, actor)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"gibsey-cli-{uuid.uuid4().hex[:8]}"
    )
    client.connect_timeout = TIMEOUT
    try:
        client.connect(host, port, keepalive=10)
    except OSError as exc:
        return f"no broker at {url} ({exc.strerror or exc})"
    client.loop_start()
    try:
        info = client.publish(topic_for(identity.node_id, kind), event.raw, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        if not info.is_published():
            return f"the broker at {url} did not acknowledge within {TIMEOUT:g}s"
    except (RuntimeError, ValueError) as exc:
        return f"publishing to {url} failed: {exc}"
    finally:
        client.disconnect()
        client.loop_stop()
    return None
