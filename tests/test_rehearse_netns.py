"""`gibsey rehearse` in network namespaces (root): real processes, real namespaces, a real bridge.

- the CLI: a short calm rehearsal of three nodes with `--net netns`, watched from outside while
  it runs (each `gibsey up` in a namespace of its own) until every node holds every node's feed,
  then stopped with Ctrl-C (SIGINT) and checked afterwards: the nodes meshed over the bridge
  (same feeds, same balances, every peer seen up at 10.77.0.x), the report says netns, and the
  run left no namespace and no host link behind;
- the gallery: a node cut off at its bridge port is seen down by its peer, misses what the room
  writes meanwhile, and catches up when healed; stop() removes the namespaces;
- a killed run's leftovers (namespaces with processes still inside, host links) are swept;
- `--net auto` falls back to loopback, and `--net netns` refuses, when not root.

Every wait is a condition with a deadline. Skipped (with netns.unavailable()'s reason) when not
root or when `ip netns` cannot make a namespace with a bridge and a veth pair.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.harness.gallery import Gallery, GalleryConfig, GalleryError, choose_net
from gibsey.harness.nodeproc import NodeProc
from gibsey.harness.waiting import wait_until
from gibsey.mesh import netns
from tests.gallery_support import started
from tests.mesh_support import REPO, balances, heads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def can_netns() -> None:
    why_not = netns.unavailable()
    if why_not:
        pytest.skip(f"network namespaces unavailable: {why_not}")


def _ours(prefix: str) -> list[str]:
    return [n for n in netns.namespaces() if n.startswith(prefix)]


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _up_pid(ns: str, data: Path) -> int | None:
    """The pid of the `gibsey up` serving `data` inside namespace `ns` (None: not there yet)."""
    done = netns.ip("netns", "pids", ns, check=False)
    for pid in (int(p) for p in done.stdout.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"up" in argv and str(data).encode() in argv:
            return pid
    return None


def test_rehearse_meshes_three_nodes_in_namespaces(can_netns: None, tmp_path: Path) -> None:
    root = tmp_path / "room"
    datas = [root / f"n{i}" for i in (1, 2, 3)]
    # --minutes only bounds a run the test would lose track of: Ctrl-C (SIGINT) ends it.
    args = "--nodes 3 --net netns --calm --minutes 2 --visitors 3 --seed 5".split()
    cmd = [sys.executable, "-m", "gibsey", "rehearse", *args, "--root", str(root)]
    out_path = tmp_path / "rehearse.out"
    with open(out_path, "wb") as sink:
        proc = subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=dict(os.environ, COLUMNS="200"),
        )
    prefix = f"{netns.NS_PREFIX}{proc.pid}-"
    try:
        # While it runs: four namespaces (a hub, three nodes), each node's daemon inside its own.
        def room() -> list[str] | None:
            names = _ours(prefix)
            return names if len(names) == 4 else None

        names = wait_until(room, 30, "the room's namespaces")
        [hub] = [n for n in names if n.endswith("-hub")]
        run = hub.removesuffix("-hub")
        assert sorted(names) == sorted([hub, *(f"{run}-n{i}" for i in (1, 2, 3))])

        def daemons() -> list[int] | None:
            pids = [_up_pid(f"{run}-n{i}", root / f"n{i}") for i in (1, 2, 3)]
            return [p for p in pids if p] if all(pids) else None

        pids = wait_until(daemons, 30, "each gibsey up inside its own namespace")
        inodes = {_netns_inode(p) for p in pids}
        assert len(inodes) == 3 and _netns_inode(os.getpid()) not in inodes

        # The visitors' rituals mint on every node; every feed reaches every node; then Ctrl-C.
        # (each feed starts with its node's `members` entry: wait for more than that)
        def minted(d: Path) -> bool:
            hs = heads(d)
            return len(hs) == 3 and min(hs.values()) >= 2

        wait_until(lambda: all(minted(d) for d in datas), 60, "every node holds three feeds")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    out = out_path.read_text(errors="replace")
    assert rc == 130, out[-4000:]  # interrupted, as Ctrl-C reports it
    assert "network: netns (asked for with --net netns)" in out, out[-4000:]
    assert "converged in" in (root / "report" / "index.html").read_text()
    assert "every node stopped cleanly" in out, out[-4000:]
    m = re.search(r"network namespaces removed \((gibsey-\d+-([0-9a-f]{6}))-\*\)", out)
    assert m and m.group(1).startswith(prefix), out[-2000:]

    # Nothing left behind: no namespace, no host link of this run.
    assert netns.leftovers(m.group(2)) == []
    assert _ours(prefix) == []

    # The room meshed: the same feeds (every node's) and the same balances everywhere.
    hs = [heads(d) for d in datas]
    assert len(hs[0]) == 3 and hs[0] == hs[1] == hs[2], hs
    views = [balances(d) for d in datas]
    assert views[0] and views[0] == views[1] == views[2]

    _assert_meshed_over_the_bridge(datas, root / "report" / "index.html")


def _assert_meshed_over_the_bridge(datas: list[Path], report_path: Path) -> None:
    """Every node listened on 10.77.0.<i> and saw both peers up there; the report says so."""
    for i, d in enumerate(datas):
        status = json.loads((d / "mesh-status.json").read_text())
        assert status["endpoint"] == f"tcp://10.77.0.{i + 1}:7470"
        peers = {p["endpoint"]: p for p in status["peers"]}
        others = {f"tcp://10.77.0.{j + 1}:7470" for j in range(3) if j != i}
        assert set(peers) == others, status["peers"]
        # Heard over the bridge from each peer. Not its state: the file is written as the node
        # stops, and a peer that stopped a moment earlier may already read "down" there.
        assert all(p["heard"] and p["bytes_in"] > 0 and not p["banned"] for p in peers.values()), (
            status["peers"]
        )
    report = report_path.read_text()
    assert "netns: one network namespace per node" in report
    # The row is the live view's last sample, which may predate the last peer coming up (the
    # status files above are the truth); it is there, with one cell per node.
    assert re.search(r"mesh peers up \(last sample\)</th>(<td>[0-2]/2</td>){3}", report)
    assert "tcp://10.77.0.3:7470" in report


@pytest.fixture
def gallery(can_netns: None, tmp_path: Path) -> Iterator[Gallery]:
    g = started(Gallery(tmp_path / "gallery", GalleryConfig(nodes=3, net="netns")))
    try:
        yield g
    finally:
        prefix = g.room_prefix()
        codes = g.stop()
        assert _ours(prefix) == [], "stop() left namespaces behind"
        assert all(v in (0, None) for v in codes.values()), codes


def _peer_state(g: Gallery, i: int) -> list[str]:
    return [p.get("state", "") for p in g.nodes[i].mesh_status().get("peers", [])]


def _mine(n: NodeProc) -> int:
    return n.heads().get(n.key, 0)


def test_partition_at_the_bridge_port_and_heal(gallery: Gallery) -> None:
    g = gallery
    a, b, c = g.nodes
    wait_until(g.meshed, 30, "the mesh over the bridge")
    assert a.url == "http://" + (g.room.node_addr(0) if g.room else "?") + ":8080"
    assert a.mesh_status()["endpoint"] == "tcp://10.77.0.1:7470"
    assert a.client is not None and b.client is not None
    # Each feed already holds its node's `members` entry (recorded when its mesh started).
    first = {n.key: _mine(n) + 1 for n in (a, b)}
    a.client.turn(1, 0)  # a Read ritual mints: an entry in n1's feed
    b.client.turn(2, 0)
    wait_until(
        lambda: g.converged() and all(g.heads()[0].get(k) == v for k, v in first.items()),
        30,
        "the first entries",
    )

    # n2 cut off at its bridge port: n1 sees it down, the host still reads it.
    g.partition(1)
    wait_until(lambda: sorted(_peer_state(g, 0)) == ["down", "up"], 20, "n1 sees n2 down")
    assert b.get("/api/status")["connected"]  # over its host link, not the bridge
    want = _mine(a) + 1  # read before the turn: its mint may land before the next line
    a.client.turn(3, 0)
    wait_until(lambda: _mine(a) == want and c.heads().get(a.key) == want, 20, "n3 gets it")
    assert b.heads().get(a.key, 0) < want  # n3 has it, n2 does not: the cut holds

    g.heal(1)
    wait_until(g.meshed, 30, "the mesh after healing")
    wait_until(lambda: g.converged() and b.heads().get(a.key) == want, 30, "n2 catches up")
    assert a.balances() == b.balances() == c.balances()


def test_sweep_removes_a_killed_runs_leftovers(can_netns: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid nobody holds any more: the maker of the room below, killed
    room = netns.Room(2, pid=dead.pid).create()
    inside = subprocess.Popen([*room.exec_prefix(0), "sleep", "300"])
    try:
        wait_until(
            lambda: str(inside.pid) in netns.ip("netns", "pids", room.ns(0)).stdout,
            10,
            "a process inside the leftover namespace",
        )
        left = netns.leftovers(room.run)
        assert len(left) == 5, left  # hub, two nodes, two host links
        removed = netns.sweep()
        assert set(left) <= set(removed)
        assert inside.wait(10) == -9
        assert netns.leftovers(room.run) == []
    finally:
        if inside.poll() is None:
            inside.kill()
        room.remove()


def test_auto_falls_back_to_loopback_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert choose_net("auto") == (
        "loopback",
        "auto: not running as root (uid 1000): network namespaces need root",
    )
    with pytest.raises(GalleryError, match=r"--net netns: not running as root \(uid 1000\)"):
        choose_net("netns")
    assert choose_net("loopback") == ("loopback", "asked for with --net loopback")
