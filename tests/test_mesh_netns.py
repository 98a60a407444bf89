"""The mesh across network namespaces (gibsey.mesh.netns.Room, as `gibsey rehearse` uses them):
partitions, kill -9, beacon discovery.

Topology: a hub namespace holding a Linux bridge, and one namespace per node joined to it by a
veth pair; node i has 10.77.0.<i+1>/24. A partition is the node's bridge port set down.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.ledger.store import Store
from gibsey.mesh import netns
from gibsey.mesh.netns import Room
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


@pytest.fixture
def room() -> Iterator[Room]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    made = Room(3, host_links=False).create()
    try:
        yield made
    finally:
        made.remove()


def _nodes(tmp: Path, room: Room, **kw: object) -> list[MeshProc]:
    addrs = [room.mesh_addr(i) for i in range(3)]
    nodes = make_nodes(tmp, addrs, [PORT] * 3, **kw)  # type: ignore[arg-type]
    for i, n in enumerate(nodes):
        n.netns = room.ns(i)
    return nodes


def test_partition_heal_and_kill9_in_namespaces(tmp_path: Path, room: Room) -> None:
    nodes = _nodes(tmp_path, room)
    a, b, c = nodes
    try:
        for n in nodes:
            n.start()
        for i, n in enumerate(nodes):
            append_mints(n.data, 3 + i, ["london-fox", "glyph-marrow", "old-natalie"][i])
        wait_until(lambda: converged(nodes) and len(heads(a.data)) == 3, 30, "convergence")

        # Partition c; both sides append; c is seen down; heal; all converge.
        room.cut(2)
        append_mints(a.data, 4, "london-fox")
        append_mints(c.data, 2, "old-natalie")
        wait_until(lambda: a.peer_state(c.key) == "down", 20, "a sees c down")
        # Each feed starts with its node's `members` entry (its gallery, recorded at start).
        assert heads(c.data)[a.key] == 4 and heads(a.data)[c.key] == 6  # nothing crossed
        wait_until(lambda: heads(b.data).get(a.key) == 8, 20, "b has a's new entries")
        room.mend(2)
        expect = {a.key: 8, b.key: 5, c.key: 8}
        wait_until(lambda: converged(nodes, expect), 30, "convergence after healing")

        # kill -9 c while it is receiving a large backlog; restart it; nothing is lost.
        c.stop()
        append_mints(a.data, 6000, "london-fox")
        c.start()
        wait_until(lambda: 8 < heads(c.data).get(a.key, 0), 60, "c syncing", step_s=0.005)
        c.stop(signal.SIGKILL)
        got = heads(c.data)[a.key]
        report = Store.open(c.data).verify()
        assert report.ok, report.problem
        c.start()
        expect = {a.key: 6008, b.key: 5, c.key: 8}
        wait_until(lambda: converged(nodes, expect), 60, "convergence after kill -9")
        views = [balances(n.data) for n in nodes]
        assert views[0] == views[1] == views[2]
        assert views[0]["london-fox"] == 6007  # within a's mint budget (ledger/ECONOMY.md)
        print(f"c held {got} of 6008 entries of a's feed when killed")
    finally:
        for n in nodes:
            n.stop()


def test_beacon_discovery_in_namespaces(tmp_path: Path, room: Room) -> None:
    broadcast = f"{netns.MESH_SUBNET}.255"
    mesh = {"beacon_port": 17471, "beacon_addr": broadcast, "beacon_interval": 0.3}
    nodes = _nodes(tmp_path, room, mesh=mesh, peers=False)  # no peers configured at all
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
