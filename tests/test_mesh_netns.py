"""The mesh across network namespaces made (and removed) by the test: partitions, kill -9, beacon.

Topology: a hub namespace holding a Linux bridge, and one namespace per node joined to it by a
veth pair; node i has 10.<net>.0.<i+1>/24. A partition is the node's veth link set down.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gibsey.ledger.store import Store
from tests.mesh_support import (
    MeshProc,
    append_mints,
    balances,
    converged,
    heads,
    make_nodes,
    wait_until,
)

PORT = 7470


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Netns:
    tag: str
    hub: str
    nodes: list[str]
    net: int

    def addr(self, i: int) -> str:
        return f"10.{self.net}.0.{i + 1}"

    def hub_link(self, i: int) -> str:
        return f"{self.tag}h{i}"

    def link(self, i: int, up: bool) -> None:
        r = _ip("-n", self.hub, "link", "set", self.hub_link(i), "up" if up else "down")
        assert r.returncode == 0, r.stderr


def _make(n: int) -> Netns:
    tag = f"gm{os.getpid() % 10000}"
    net = 100 + os.getpid() % 100
    hub = f"{tag}-hub"
    r = _ip("netns", "add", hub)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    ns = Netns(tag, hub, [], net)
    try:
        for cmd in (
            ["-n", hub, "link", "add", "br0", "type", "bridge"],
            ["-n", hub, "link", "set", "br0", "up"],
        ):
            r = _ip(*cmd)
            assert r.returncode == 0, r.stderr
        for i in range(n):
            name = f"{tag}-n{i}"
            assert _ip("netns", "add", name).returncode == 0
            ns.nodes.append(name)
            cmds = [
                ["link", "add", f"{tag}n{i}", "type", "veth", "peer", "name", ns.hub_link(i)],
                ["link", "set", f"{tag}n{i}", "netns", name],
                ["link", "set", ns.hub_link(i), "netns", hub],
                ["-n", hub, "link", "set", ns.hub_link(i), "master", "br0", "up"],
                ["-n", name, "addr", "add", f"{ns.addr(i)}/24", "brd", "+", "dev", f"{tag}n{i}"],
                ["-n", name, "link", "set", f"{tag}n{i}", "up"],
                ["-n", name, "link", "set", "lo", "up"],
            ]
            for cmd in cmds:
                r = _ip(*cmd)
                assert r.returncode == 0, f"ip {' '.join(cmd)}: {r.stderr}"
    except BaseException:
        _remove(ns)
        raise
    return ns


def _remove(ns: Netns) -> None:
    for name in [*ns.nodes, ns.hub]:  # deleting a namespace deletes its veth ends too
        _ip("netns", "del", name)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = _make(3)
    try:
        yield ns
    finally:
        _remove(ns)


def _nodes(tmp: Path, ns: Netns, **kw: object) -> list[MeshProc]:
    nodes = make_nodes(tmp, [ns.addr(i) for i in range(3)], [PORT] * 3, **kw)  # type: ignore[arg-type]
    for i, n in enumerate(nodes):
        n.netns = ns.nodes[i]
    return nodes


def test_partition_heal_and_kill9_in_namespaces(tmp_path: Path, netns: Netns) -> None:
    nodes = _nodes(tmp_path, netns)
    a, b, c = nodes
    try:
        for n in nodes:
            n.start()
        for i, n in enumerate(nodes):
            append_mints(n.data, 3 + i, ["london-fox", "glyph-marrow", "old-natalie"][i])
        wait_until(lambda: converged(nodes) and len(heads(a.data)) == 3, 30, "convergence")

        # Partition c; both sides append; c is seen down; heal; all converge.
        netns.link(2, up=False)
        append_mints(a.data, 4, "london-fox")
        append_mints(c.data, 2, "old-natalie")
        wait_until(lambda: a.peer_state(c.key) == "down", 20, "a sees c down")
        assert heads(c.data)[a.key] == 3 and heads(a.data)[c.key] == 5  # nothing crossed
        wait_until(lambda: heads(b.data).get(a.key) == 7, 20, "b has a's new entries")
        netns.link(2, up=True)
        expect = {a.key: 7, b.key: 4, c.key: 7}
        wait_until(lambda: converged(nodes, expect), 30, "convergence after healing")

        # kill -9 c while it is receiving a large backlog; restart it; nothing is lost.
        c.stop()
        append_mints(a.data, 6000, "london-fox")
        c.start()
        wait_until(lambda: 7 < heads(c.data).get(a.key, 0), 60, "c syncing", step=0.005)
        c.stop(signal.SIGKILL)
        got = heads(c.data)[a.key]
        report = Store.open(c.data).verify()
        assert report.ok, report.problem
        c.start()
        expect = {a.key: 6007, b.key: 4, c.key: 7}
        wait_until(lambda: converged(nodes, expect), 60, "convergence after kill -9")
        views = [balances(n.data) for n in nodes]
        assert views[0] == views[1] == views[2]
        assert views[0]["london-fox"] == 6007
        print(f"c held {got} of 6007 entries of a's feed when killed")
    finally:
        for n in nodes:
            n.stop()


def test_beacon_discovery_in_namespaces(tmp_path: Path, netns: Netns) -> None:
    mesh = {"beacon_port": 17471, "beacon_addr": f"10.{netns.net}.0.255", "beacon_interval": 0.3}
    nodes = _nodes(tmp_path, netns, mesh=mesh, peers=False)  # no peers configured at all
    # TOML forbids a repeated key: drop make_nodes' default `beacon_port = 0`.
    for n in nodes:
        cfg = n.data / "gibsey.toml"
        cfg.write_text(cfg.read_text().replace("beacon_port = 0\n", ""))
    try:
        for n in nodes:
            n.start()
        for i, n in enumerate(nodes):
            append_mints(n.data, 2 + i)
        wait_until(lambda: converged(nodes) and len(heads(nodes[0].data)) == 3, 30, "beacon mesh")
        others = {nodes[1].key, nodes[2].key}
        wait_until(
            lambda: {p["key"] for p in nodes[0].status().get("peers", [])} == others,
            10,
            "discovered peers in the status",
        )
    finally:
        for n in nodes:
            n.stop()
