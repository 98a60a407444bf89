"""Which nodes Prometheus scrapes: the node's mesh membership, as file_sd JSON (`gibsey monitor`
writes it) and as HTTP service discovery (the gateway serves it at TARGETS_PATH, read anew at
each request, so the targets follow the mesh while Prometheus runs).

Prometheus re-reads a `file_sd_configs` file when it changes and polls `http_sd_configs`, so a
gallery's targets can change without restarting it. The membership is what the node knows
from its data directory: its own gateway (`gateway.json`, written by a running node, else
`[gateway] listen`), the peers of `[mesh] peers` and the peers the running mesh has met
(`mesh-status.json`: beacons too). A peer's gateway is assumed on the same port as this node's
(a gallery's nodes share one image); a `--target HOST:PORT` adds any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gibsey.core.config import ConfigError, check_host
from gibsey.node.gateway.config import DEFAULT_LISTEN, PORT_FILE, parse_listen

# The hosts a node binds to that are no address to dial.
WILDCARD_HOSTS = ("0.0.0.0", "::", "*", "")
LOCAL_HOST = "127.0.0.1"
MESH_STATUS_FILE = "mesh-status.json"  # mesh/node.py STATUS_FILENAME
TARGETS_PATH = "/api/monitor/targets"
GALLERY_LABEL_CHARS = 64
# A mesh key in a label: the first 16 hex digits, as gibsey_mesh_peer_last_seen_seconds's `peer`.
KEY_LABEL_CHARS = 16


class TargetError(ValueError):
    """A target that is no HOST:PORT."""


@dataclass(frozen=True)
class Target:
    address: str  # HOST:PORT of a node's gateway
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def parse_target(text: str) -> Target:
    """`HOST:PORT` (a name, an IPv4 address or a bracketed IPv6 one) -> Target."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TargetError(f"target {text!r}: expected HOST:PORT with a port 1..65535")
    try:
        check_host(host.strip("[]"), f"target {text!r}: host")
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    return Target(f"{host}:{int(port)}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _dialable(host: str, fallback: str) -> str:
    return fallback if host in WILDCARD_HOSTS else host


def _endpoint_host(endpoint: str) -> str | None:
    """The host of a tcp://HOST:PORT mesh endpoint (None for ipc:// or a wildcard)."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint.removeprefix("tcp://").rpartition(":")[0]
    return None if host in WILDCARD_HOSTS else host


def own_gateway(data_dir: Path, listen: str | None) -> tuple[str, int]:
    """This node's gateway as another machine dials it: the running node's `gateway.json`, else
    `listen` from the configuration. A wildcard bind is dialled at the mesh's advertised host if
    there is one, else on this machine (a monitor beside the node)."""
    info = _read_json(data_dir / PORT_FILE)
    if isinstance(info.get("port"), int) and isinstance(info.get("host"), str):
        host, port = str(info["host"]), int(info["port"])
    else:
        try:
            host, port = parse_listen(listen or DEFAULT_LISTEN)
        except ConfigError:
            host, port = parse_listen(DEFAULT_LISTEN)
    advertised = _endpoint_host(str(_read_json(data_dir / MESH_STATUS_FILE).get("endpoint", "")))
    return _dialable(host, advertised or LOCAL_HOST), port


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def membership(data_dir: Path, listen: str | None, peers: list[tuple[str, str]]) -> list[Target]:
    """This node and its mesh peers as scrape targets. `peers` are the configured (key hex,
    endpoint) pairs; the running mesh's status adds the peers it has met."""
    host, port = own_gateway(data_dir, listen)
    status = _read_json(data_dir / MESH_STATUS_FILE)
    own_labels = {"role": "self"}
    if isinstance(status.get("key"), str):
        own_labels["mesh_key"] = str(status["key"])[:KEY_LABEL_CHARS]
    targets = {_address(host, port): Target(_address(host, port), own_labels)}
    met = [(str(p.get("key", "")), str(p.get("endpoint", ""))) for p in status.get("peers", [])]
    for key, endpoint in [*peers, *met]:
        peer_host = _endpoint_host(endpoint)
        if peer_host is None:
            continue
        address = _address(peer_host, port)
        labels = {"role": "peer", "mesh_key": key[:KEY_LABEL_CHARS]}
        targets.setdefault(address, Target(address, labels))
    return list(targets.values())


def http_sd(targets: list[Target], gallery: str) -> list[dict[str, Any]]:
    """Target groups (file_sd and http_sd read the same): one per target, so each keeps its own
    labels. The same labels either way, so Prometheus counts a target found both ways once."""
    return [
        {"targets": [t.address], "labels": {"gallery": gallery, **t.labels}}
        for t in sorted(targets, key=lambda t: t.address)
    ]


def file_sd(targets: list[Target], gallery: str) -> str:
    """The file_sd JSON."""
    return json.dumps(http_sd(targets, gallery), indent=2) + "\n"
