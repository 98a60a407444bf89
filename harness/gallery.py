"""A gallery on one machine: N complete nodes, their brokers, their mesh links, their dials.

Each node is a real `gibsey up` process with its own data directory (identity, ledger, story,
agents), its own Mosquitto (a Pi in a room runs its own broker, so one node's load never lands
on another's spine, and the mesh is the only path between nodes, as in a gallery), its own
gateway (DATA/gateway.json) and its own mesh endpoint. The room's network is one of two:

- `loopback` (any user): everything on 127.0.0.1, on free ports. Mesh links go through small
  TCP relays run by this process, one per ordered pair of nodes (node i dials node j at relay
  (i, j), which forwards to j's real endpoint). Cutting a node's relays partitions it from the
  room while every daemon keeps running; healing opens them again. CurveZMQ runs end to end
  through the relays.
- `netns` (root): each node's `gibsey up` and Mosquitto run inside a network namespace of its
  own (gibsey.mesh.netns), joined to the others by a bridge: the mesh endpoint listens on
  10.77.0.<i>:7470 and peers dial each other there, with nothing in between. The daemon reaches
  its broker on 127.0.0.1:1883 inside its namespace (as on a Pi, and so do `gibsey` commands run
  beside it); this process reaches the broker and the gateway (:8080) over the node's host link,
  a point-to-point veth that leads nowhere else, so the live view and the report keep reading
  a node while it is partitioned. A partition sets the node's bridge port down.

`choose_net("auto")` picks netns when running as root where `ip netns` works, else loopback.

This module only puts the room together (Gallery, and GalleryError for its callers); each job
inside it has a module of its own: mosquitto.py (a broker process), relay.py (the loopback mesh
links), watch.py (the MQTT client on a node's broker), nodeproc.py (one `gibsey up` process),
waiting.py (deadlines, and GalleryError, which all of them raise).

Used by `gibsey rehearse`, `gibsey bench rehearse` and tests/test_acceptance.py.
"""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gibsey.core.identity import load_or_create
from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.nodeproc import NodeProc
from gibsey.harness.ports import free_port
from gibsey.harness.relay import Links
from gibsey.harness.waiting import GalleryError
from gibsey.harness.watch import NodeClient
from gibsey.mesh import netns

__all__ = ["NETS", "Gallery", "GalleryConfig", "GalleryError", "choose_net", "describe_net"]


# ---- the room's network ------------------------------------------------------------------

NETS = ("auto", "netns", "loopback")
MESH_PORT = 7470  # in netns mode every node has ports of its own: the usual ones
GATEWAY_PORT = 8080


def choose_net(wanted: str) -> tuple[str, str]:
    """(net, why): the network a gallery runs on for `--net wanted`, and the reason in words.
    GalleryError when netns is asked for and cannot be had."""
    if wanted not in NETS:
        raise GalleryError(f"--net {wanted!r}: expected one of {', '.join(NETS)}")
    if wanted == "loopback":
        return "loopback", "asked for with --net loopback"
    why_not = netns.unavailable()
    if wanted == "netns":
        if why_not:
            raise GalleryError(f"--net netns: {why_not}")
        return "netns", "asked for with --net netns"
    if why_not:
        return "loopback", f"auto: {why_not}"
    return "netns", "auto: running as root and `ip netns` works"


def describe_net(net: str) -> str:
    """One line on what the network of a gallery is, for the live view and the report."""
    if net == "netns":
        return (
            f"netns: one network namespace per node, mesh on a bridge ({netns.MESH_SUBNET}.0/24,"
            f" port {MESH_PORT}); broker and gateway reached over per-node host links"
        )
    return "loopback: mesh over 127.0.0.1 through relays run by the rehearsal"


def _broker(workdir: Path) -> Mosquitto:
    """A node's broker, its queue per client deep enough for a rehearsal's bursts (Mosquitto
    drops QoS 1 messages past its default of 1000)."""
    return Mosquitto(workdir, extra_conf="max_queued_messages 100000", own_session=True)


# ---- the gallery ---------------------------------------------------------------------------


@dataclass
class GalleryConfig:
    nodes: int = 3
    # [mesh] timing: rehearsals want convergence in seconds, not the production defaults
    sync_interval: float = 0.5
    down_after: float = 2.0
    backoff_max: float = 2.0
    # [node] ledger_commit_every_s: the gallery reads each node's ledger from outside (heads,
    # entries, convergence), which sees what a node committed to SQLite, not what its entry
    # log holds; committing every group, a node's acknowledged entries are what is read
    ledger_commit_every_s: float = 0.0
    # [agent]: a persona answers briefly; rotations per second per actor before throttling
    agent: dict[str, Any] = field(
        default_factory=lambda: {"max_tokens": 24, "threads": 1, "memory": False}
    )
    # the room's network: "loopback" (relays on 127.0.0.1) or "netns" (root; see the docstring)
    net: str = "loopback"


class Gallery:
    """N nodes on this machine. start() brings them all up and meshed; stop() is Ctrl-C.

    In netns mode start() first removes what killed runs left behind (netns.sweep()), then
    makes the room's namespaces; stop() removes them, even when a node would not stop."""

    def __init__(self, root: Path, config: GalleryConfig | None = None) -> None:
        self.root = root
        self.config = config or GalleryConfig()
        self.net = self.config.net
        if self.net not in ("loopback", "netns"):
            raise GalleryError(f"net {self.net!r}: expected loopback or netns")
        self.links: Links | None = Links() if self.net == "loopback" else None
        self.room: netns.Room | None = None
        if self.net == "netns":
            try:
                self.room = netns.Room(self.config.nodes)
            except netns.NetnsError as exc:
                raise GalleryError(str(exc)) from exc
        self.swept: list[str] = []  # leftovers of killed runs removed at start (netns)
        self.cut: set[int] = set()  # nodes partitioned now
        self.nodes: list[NodeProc] = []
        root.mkdir(parents=True, exist_ok=True)
        n = self.config.nodes
        for i in range(n):
            data = root / f"n{i + 1}"
            data.mkdir(parents=True, exist_ok=True)
            identity = load_or_create(data)
            node = NodeProc(
                index=i,
                data=data,
                token=secrets.token_hex(16),
                broker=_broker(root / f"n{i + 1}-mosquitto"),
                mesh_port=free_port() if self.room is None else MESH_PORT,
            )
            node.node_id, node.key = identity.node_id, identity.public_hex
            self.nodes.append(node)
        for a in self.nodes:
            peers = []
            for b in self.nodes:
                if a is b:
                    continue
                if self.links is not None:
                    port = self.links.add(a.index, b.index, b.mesh_port)
                    peers.append(f"{b.key}@tcp://127.0.0.1:{port}")
                else:
                    peers.append(f"{b.key}@tcp://{self.mesh_host(b)}:{b.mesh_port}")
            self._write_config(a, peers)

    def room_prefix(self) -> str:
        """What the names of this run's namespaces begin with ("" on loopback)."""
        return self.room.prefix if self.room is not None else ""

    def leftovers(self) -> list[str]:
        """This run's namespaces and host links still present (after stop(): none)."""
        return netns.leftovers(self.room.run) if self.room is not None else []

    def mesh_host(self, node: NodeProc) -> str:
        """The address node's mesh endpoint listens on."""
        return "127.0.0.1" if self.room is None else self.room.mesh_addr(node.index)

    def _write_config(self, node: NodeProc, peers: list[str]) -> None:
        cfg = self.config
        allow = [b.key for b in self.nodes if b is not node]
        lines = [
            "[node]",
            f"ledger_commit_every_s = {cfg.ledger_commit_every_s}",
            "",
            "[mesh]",
            f'listen = "tcp://{self.mesh_host(node)}:{node.mesh_port}"',
            "beacon_port = 0",
            f"sync_interval = {cfg.sync_interval}",
            f"down_after = {cfg.down_after}",
            f"backoff_max = {cfg.backoff_max}",
            "allow = " + json.dumps(allow),
            "peers = " + json.dumps(peers),
            "",
            "[gateway]",
            f'token = "{node.token}"',
            "",
            "[dial]",
            'serial = "off"',
            "",
            "[agent]",
        ]
        for k, v in cfg.agent.items():
            lines.append(f"{k} = {json.dumps(v)}")
        (node.data / "gibsey.toml").write_text("\n".join(lines) + "\n")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> None:
        if self.room is not None:
            self.swept = netns.sweep()
            try:
                self.room.create()
            except netns.NetnsError as exc:
                raise GalleryError(f"cannot make the network namespaces: {exc}") from exc
            for node in self.nodes:
                node.prefix = self.room.exec_prefix(node.index)
                node.http_listen = f"{self.room.node_addr(node.index)}:{GATEWAY_PORT}"
                node.broker.in_netns(node.prefix, self.room.node_addr(node.index))
        for node in self.nodes:
            node.broker.start()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready(timeout_s)
            node.client = NodeClient(node.node_id, node.broker.port, host=node.broker.host)
            node.client.hello()

    def meshed(self) -> bool:
        want = len(self.nodes) - 1
        return all(n.peers_up() >= want for n in self.nodes)

    def stop(self) -> dict[str, int | None]:
        """Ctrl-C: SIGINT to every `gibsey up` (all at once), wait for them, then the brokers;
        last the relays or the namespaces (whatever happened before)."""
        try:
            for node in self.nodes:
                if node.alive():
                    assert node.proc is not None
                    node.proc.send_signal(signal.SIGINT)
            codes = {node.name: node.interrupt(signalled=True) for node in self.nodes}
            for node in self.nodes:
                if node.client is not None:
                    node.client.close()
                    node.client = None
                node.broker.stop()
        finally:
            if self.links is not None:
                self.links.close()
            if self.room is not None:
                self.room.remove()
        return codes

    def kill(self, i: int) -> int:
        node = self.nodes[i]
        pid = node.kill()
        if node.client is not None:
            node.client.reset_latency()
        return pid

    def restart(self, i: int, timeout_s: float = 90.0) -> None:
        node = self.nodes[i]
        if node.alive():
            node.interrupt()
        node.start()
        node.restarts += 1
        node.wait_ready(timeout_s)
        if node.client is not None:
            node.client.reset_latency()
            node.client.hello()

    def partition(self, i: int) -> None:
        """Cut node i off the mesh (its relays, or its bridge port); its daemon keeps running."""
        if self.room is not None:
            self._netns(self.room.cut, i)
        elif self.links is not None:
            self.links.partition(i)
        self.cut.add(i)

    def heal(self, i: int) -> None:
        if self.room is not None:
            self._netns(self.room.mend, i)
        elif self.links is not None:
            self.links.heal(i)
        self.cut.discard(i)

    @staticmethod
    def _netns(fn: Callable[[int], None], i: int) -> None:
        try:
            fn(i)
        except netns.NetnsError as exc:
            raise GalleryError(str(exc)) from exc

    def heal_all(self) -> None:
        for i in sorted(self.cut):
            self.heal(i)

    # -- the room's state -------------------------------------------------------------------
    def heads(self) -> list[dict[str, int]]:
        return [n.heads() for n in self.nodes]

    def converged(self) -> bool:
        hs = self.heads()
        return bool(hs[0]) and all(h == hs[0] for h in hs)

    def behind(self) -> list[int]:
        """Per node: how many entries the room holds that this node does not (mesh lag)."""
        hs = self.heads()
        union: dict[str, int] = {}
        for h in hs:
            for a, s in h.items():
                union[a] = max(union.get(a, 0), s)
        return [sum(s - h.get(a, 0) for a, s in union.items()) for h in hs]

    def __iter__(self) -> Iterator[NodeProc]:
        return iter(self.nodes)
