"""Put one event on the node's spine from a short-lived command (`gibsey ledger gift`, ...).

The command is not the daemon, so it opens its own MQTT connection to the node's broker (the
configured one, else where the embedded broker listens), publishes with QoS 1, waits for the
broker's acknowledgement, and disconnects (core/mqtt.py's `publish_once`). If no broker answers,
the command's real work (a ledger entry, a table change) is already durable; the announcement is
what is missing, and the caller says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gibsey.core.config import ConfigError, NodeConfig, load_config
from gibsey.core.envelope import Payload, encode_event
from gibsey.core.identity import KEY_FILENAME, load_or_create
from gibsey.core.lamport import LAMPORT_FILENAME, DamagedNumber, read_number
from gibsey.core.mqtt import publish_once
from gibsey.core.topics import topic_for

TIMEOUT_S = 3.0


# Where the running node's embedded broker listens, written by the node when it starts it and
# removed when it stops: `gibsey up --embedded-port N` is a command-line choice that no other
# command reads, and each announced to the configured port, where no broker was.
# Where the running node's broker is, when `gibsey up` chose it alone (its embedded broker on
# `--embedded-port`, or `--broker URL`): gibsey.toml does not say, and the commands beside it
# would announce to the default port, where no broker is.
RUNNING_BROKER_FILE = "running-broker.json"


def broker_url(data_dir: Path, config: NodeConfig | None = None) -> str:
    """The broker a command beside the node talks to: the one the node running on `data_dir`
    uses (`gibsey up --embedded-port N` or `--broker URL` is not in gibsey.toml), else the
    configured one (`config`, when the caller has loaded it already), else the embedded one."""
    config = config or load_config(data_dir)
    return (
        running_broker(data_dir)
        or config.broker
        or f"mqtt://{config.embedded_host}:{config.embedded_port}"
    )


def running_broker_record(url: str) -> bytes:
    """RUNNING_BROKER_FILE's content, as the node writes it (0600: a URL given on the command
    line may hold a password): the URL, and its pid (read below)."""
    return json.dumps({"url": url, "pid": os.getpid()}).encode()


def running_broker(data_dir: Path) -> str | None:
    """The URL of the broker the node running on `data_dir` chose on its command line (or the
    embedded broker it started), if that node still runs."""
    try:
        doc = json.loads((data_dir / RUNNING_BROKER_FILE).read_bytes())
        url, pid = str(doc["url"]), int(doc["pid"])
        os.kill(pid, 0)  # the node that wrote it still runs (a kill -9 leaves the file)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if url.startswith(("mqtt://", "mqtts://")) else None


def after_the_node(data_dir: Path, lamport: int) -> int:
    """The lamport for a command's event, sent as the node: `lamport` (its entry's, the
    ledger's), or, when the node's clock is further on, its ceiling on disk, which is above
    every lamport the node has sent (core/lamport.py). The command ran after those events, and
    the node, hearing this one, moves its clock past it. A command's gift/txn went out at its
    entry's lamport (2) beside the node's events at a million and more (an outside audit): a
    dashboard ordering by lamport put it before them."""
    try:
        ceiling = read_number(data_dir / LAMPORT_FILENAME)
    except DamagedNumber:  # the node says so itself, and starts its clock again
        ceiling = None
    return max(lamport, ceiling or 0)


def announce(
    data_dir: Path, kind: str, payload: Payload, *, actor: str, lamport: int
) -> str | None:
    """Publish one event; None when the broker acknowledged it, else why it was not sent."""
    try:
        url = broker_url(data_dir)
    except ConfigError as exc:  # the command's work is done: say why it was not announced
        return str(exc)
    if not (data_dir / KEY_FILENAME).exists():  # a ledger read alone, copied to be checked
        return f"no node in {data_dir} to announce it as"
    identity = load_or_create(data_dir)
    event = encode_event(identity.node_id, kind, payload, after_the_node(data_dir, lamport), actor)
    return publish_once(
        url,
        topic_for(identity.node_id, kind),
        event.raw,
        client_prefix="gibsey-cli",
        timeout_s=TIMEOUT_S,
    )
