"""Beacons replayed or pointing a configured peer elsewhere (an outside tester's find).

What is tried: a real MeshNode (real ZeroMQ, real keys, its beacon on a real UDP port on
loopback) is sent signed beacons from real UDP sockets bound to other loopback addresses
(127.0.0.2, 127.0.0.3), as a replaying attacker on the venue's Wi-Fi sends them from its own
address. What must hold: a captured beacon sent again, or one with an older `t`, does not move
a peer met by beacon; a fresh beacon does not move a peer whose endpoint is configured; a fresh
beacon of an unconfigured peer still moves it (discovery still works), whatever its clock says.

Each check of something that must *not* happen is ordered by a marker: a fresh beacon of
another allow-listed key, sent from the same socket after the beacons under test. Loopback UDP
from one socket to one socket arrives in order, so once the marker's peer exists, the beacons
before it have been handled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.harness.ports import free_port
from gibsey.ledger.store import Store
from gibsey.mesh.beacon import DOMAIN, MAGIC
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import MeshNode
from tests.mesh_support import quick_mesh_config

pytestmark = pytest.mark.timeout(60)

PEER = SigningKey(bytes([0x51]) * 32)
MARKER = SigningKey(bytes([0x52]) * 32)
T0 = 1_000  # a Pi without RTC may well think it is January 1970: only the order of `t` counts


def beacon(key: SigningKey, endpoint: str, t: int) -> bytes:
    """A datagram as mesh/beacon.py's encode signs it (spelled out: the test pins the format)."""
    body = json.dumps(
        {"ep": endpoint, "key": key.verify_key.encode().hex(), "t": t},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return MAGIC + body + key.sign(DOMAIN + MAGIC + body).signature


class Sender:
    """Real UDP sockets, one per source address, aimed at the node's beacon port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socks: dict[str, socket.socket] = {}
        self.marker_t = T0

    def send(self, data: bytes, source: str) -> None:
        if source not in self.socks:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((source, 0))
            self.socks[source] = s
        self.socks[source].sendto(data, ("127.0.0.1", self.port))

    async def settle(self, node: MeshNode) -> None:
        """Return once every datagram sent so far has been handled: from each source in turn, a
        marker beacon to a new endpoint, waited for (see the module docstring)."""
        for source in self.socks:
            self.marker_t += 1
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            self.send(beacon(MARKER, endpoint, self.marker_t), source)
            await until(partial(_marked, node, endpoint), f"the marker beacon from {source}")

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


async def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _marked(node: MeshNode, endpoint: str) -> bool:
    return endpoint_of(node, MARKER) == endpoint and dialing(node, MARKER)


def endpoint_of(node: MeshNode, key: SigningKey) -> str:
    peer = node.peers.get(key.verify_key.encode())
    return peer.endpoint if peer is not None else ""


def dialing(node: MeshNode, key: SigningKey) -> bool:
    """The peer's dialer holds its socket: only from here on can a beacon move it (add_peer)."""
    peer = node.peers.get(key.verify_key.encode())
    return peer is not None and peer.sock is not None


@asynccontextmanager
async def running(tmp: Path, peers: list[PeerSpec]) -> AsyncIterator[tuple[MeshNode, Sender]]:
    """A listening node allowing PEER and MARKER, its beacon on a free UDP port."""
    cfg = quick_mesh_config(peers, {PEER.verify_key.encode(), MARKER.verify_key.encode()})
    cfg.beacon_port = free_port()
    cfg.beacon_addr = "127.0.0.1"  # its own announces come back to it (ignored), not to the LAN
    cfg.beacon_interval = 3600.0
    store = Store.open(tmp / "node")
    node = MeshNode(store, SigningKey(bytes([0x50]) * 32), cfg)
    sender = Sender(cfg.beacon_port)
    await node.start()
    try:
        yield node, sender
    finally:
        sender.close()
        await node.stop()
        store.close()


async def test_replayed_or_older_beacon_does_not_move_a_peer_met_by_beacon(tmp_path: Path) -> None:
    """Tried: the peer's beacon (wildcard host, from 127.0.0.2) is captured; the peer then
    moves (a fresh beacon, a later `t`); the capture is replayed from 127.0.0.3, and a beacon
    the peer signed with a `t` between the two is sent too. Must hold: the peer stays where its
    latest beacon put it (before: `moved to tcp://127.0.0.3:...`, the outside tester's log)."""
    first, latest = free_port(), f"tcp://127.0.0.2:{free_port()}"
    captured = beacon(PEER, f"tcp://0.0.0.0:{first}", T0)
    async with running(tmp_path, []) as (node, sender):
        sender.send(captured, "127.0.0.2")
        await until(lambda: endpoint_of(node, PEER) == f"tcp://127.0.0.2:{first}", "discovery")
        await until(lambda: dialing(node, PEER), "the peer's dialer")
        sender.send(beacon(PEER, latest, T0 + 2000), "127.0.0.2")
        await until(lambda: endpoint_of(node, PEER) == latest, "the peer's move")

        sender.send(beacon(PEER, latest, T0 + 2000), "127.0.0.3")  # the latest, again
        sender.send(captured, "127.0.0.3")  # the capture's same bytes, from the attacker
        await sender.settle(node)
        assert endpoint_of(node, PEER) == latest
        sender.send(beacon(PEER, f"tcp://127.0.0.3:{first}", T0 + 1000), "127.0.0.3")  # older
        await sender.settle(node)
        assert endpoint_of(node, PEER) == latest


async def test_fresh_beacon_does_not_move_a_configured_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: the peer is configured (`[mesh] peers = ["KEY@tcp://127.0.0.1:P"]`); beacons it
    signed with fresh `t`s, wildcard hosts and other ports arrive from 127.0.0.2. Must hold:
    its configured endpoint stays, no `moved` line is logged, and the differing beacon is
    noted once, not per packet."""
    configured = f"tcp://127.0.0.1:{free_port()}"
    elsewhere = free_port()
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    async with running(tmp_path, [PeerSpec(PEER.verify_key.encode(), configured)]) as (
        node,
        sender,
    ):
        await until(lambda: dialing(node, PEER), "the configured peer's dialer")
        for i in range(3):
            sender.send(beacon(PEER, f"tcp://0.0.0.0:{elsewhere}", T0 + i), "127.0.0.2")
        await sender.settle(node)
        assert endpoint_of(node, PEER) == configured
    assert not [r for r in caplog.records if "moved to" in r.getMessage()]
    notes = [r for r in caplog.records if "keeping its configured endpoint" in r.getMessage()]
    assert len(notes) == 1


async def test_fresh_beacon_still_moves_a_peer_met_by_beacon(tmp_path: Path) -> None:
    """Tried: an unconfigured peer whose clock says 1970 (no RTC) beacons from 127.0.0.2, then
    from 127.0.0.3 with a later `t`, both with a wildcard host. Must hold: it is discovered and
    then moved to the new source address (the feature the fix keeps)."""
    port = free_port()
    async with running(tmp_path, []) as (node, sender):
        sender.send(beacon(PEER, f"tcp://0.0.0.0:{port}", T0), "127.0.0.2")
        await until(lambda: endpoint_of(node, PEER) == f"tcp://127.0.0.2:{port}", "discovery")
        await until(lambda: dialing(node, PEER), "the peer's dialer")
        sender.send(beacon(PEER, f"tcp://0.0.0.0:{port}", T0 + 1), "127.0.0.3")
        await until(lambda: endpoint_of(node, PEER) == f"tcp://127.0.0.3:{port}", "the move")


@pytest.mark.parametrize("t", [None, "1000", True, 1.5])
async def test_beacon_without_an_integer_t_is_ignored(tmp_path: Path, t: object) -> None:
    """Tried: a signed beacon whose `t` is missing or no integer. Must hold: it is ignored (it
    could not be ordered against a replay)."""
    obj = {"ep": f"tcp://127.0.0.1:{free_port()}", "key": PEER.verify_key.encode().hex()}
    if t is not None:
        obj["t"] = t  # type: ignore[assignment]
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    async with running(tmp_path, []) as (node, sender):
        sender.send(MAGIC + body + PEER.sign(DOMAIN + MAGIC + body).signature, "127.0.0.2")
        await sender.settle(node)
        assert endpoint_of(node, PEER) == ""


async def test_a_beacon_signed_with_our_own_key_by_another_node_says_twins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried (an outside tester): a data directory copied to a second node, beacons on, no
    peer configured that both dial: neither twin was told, and their next entries forked the
    feed. Must hold: a beacon signed with the node's own key that it did not send (a fresh `t`,
    from 127.0.0.2) is said as two nodes with one key, once per beacon; the node's own beacons
    looped back, one of them replayed, and an older `t` are not."""
    caplog.set_level(logging.WARNING, logger="gibsey.mesh")
    async with running(tmp_path, []) as (node, sender):
        beacons = node._beacon
        assert beacons is not None
        await until(lambda: len(beacons.sent) == 1 and beacons.heard == 0, "its own beacon")
        own_t = beacons.sent[0]
        me = SigningKey(bytes([0x50]) * 32)
        sender.send(beacon(me, node.advertised(), own_t), "127.0.0.2")  # its own, replayed
        sender.send(beacon(me, node.advertised(), own_t - 1), "127.0.0.2")  # older than any
        await sender.settle(node)
        assert node.stats.one_key_two_nodes == 0
        twin = f"tcp://127.0.0.2:{free_port()}"
        sender.send(beacon(me, twin, own_t + 1), "127.0.0.2")
        await until(lambda: node.stats.one_key_two_nodes == 1, "the twin said")
        sender.send(beacon(me, twin, own_t + 1), "127.0.0.3")  # the twin's beacon, replayed
        await sender.settle(node)
        assert node.stats.one_key_two_nodes == 1
    said = next(r.getMessage() for r in caplog.records if "two nodes speak" in r.getMessage())
    assert "in a beacon from 127.0.0.2 (" + twin + ") that this node did not send" in said
