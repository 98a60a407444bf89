"""A peer that refused our handshake once is dialed again: libzmq never reconnects a session
whose handshake failed, so a node configured before its peer listed it (how a technician sets
up a room, one node after another), or banned by it for a while, stayed cut off from it until
it restarted. Real MeshNodes, real ZeroMQ with CurveZMQ and real keys, on loopback."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.harness.waiting import until
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import Store
from gibsey.mesh.config import PeerSpec, curve_public
from gibsey.mesh.node import MeshNode
from tests.mesh_support import quick_mesh_config

pytestmark = pytest.mark.timeout(60)

A = SigningKey(bytes([0x71]) * 32)
B = SigningKey(bytes([0x72]) * 32)


async def test_a_peer_that_lists_us_after_refusing_us_is_met_without_a_restart(
    tmp_path: Path,
) -> None:
    """Tried: node A dials B, which lists nobody yet, so refuses A's key; then B comes to list A
    (as its allow-list grows at run time). Must hold: B refused A at least twice meanwhile (A
    kept dialing), then A's view of B comes up and an entry A wrote reaches B, with neither
    restarted."""
    store_b = Store.open(tmp_path / "b")
    node_b = MeshNode(store_b, B, quick_mesh_config([], set()))
    await node_b.start()
    ledger_a = Ledger.open(tmp_path / "a", A)
    b_key = B.verify_key.encode()
    cfg_a = quick_mesh_config([PeerSpec(b_key, node_b.endpoint)], {b_key})
    node_a = MeshNode(ledger_a.store, A, cfg_a)
    await node_a.start()
    try:
        await until(lambda: node_b.stats.unknown_key >= 2, 20, "B refusing A, A dialing again")
        assert node_a.peers[b_key].state != "up"
        a_key = A.verify_key.encode()
        node_b.allowed.add(a_key)
        node_b.curve_to_ed[curve_public(a_key)] = a_key
        entry = ledger_a.mint("ada", 1, "redial")
        await until(lambda: node_a.peers[b_key].state == "up", 20, "A meeting B")
        await until(lambda: store_b.get_by_hash(entry.hash), 20, "A's entry at B")
    finally:
        await node_a.stop()
        await node_b.stop()
        ledger_a.close()
        store_b.close()


async def test_a_peer_listed_with_a_key_not_its_own_is_dialled_with_a_growing_pause(
    tmp_path: Path,
) -> None:
    """Tried (an outside tester): a peer listed as B's key at A's endpoint. A hangs up in every
    handshake (it holds no such key), and libzmq dialled again every 100 ms for ever: 10 dial
    failures a second on the dialer, 10 bad handshakes a second on A. Must hold: each failure
    ends the socket and the next dial waits a pause that doubles (from sync_interval, here
    0.05 s, to backoff_max, here 1 s): over 4 s, a handful of dials, not 40."""
    store_a = Store.open(tmp_path / "a")
    node_a = MeshNode(store_a, A, quick_mesh_config([], set()))
    await node_a.start()
    b_key = B.verify_key.encode()
    cfg = quick_mesh_config([PeerSpec(b_key, node_a.endpoint)], {b_key})
    cfg.backoff_max = 1.0
    dialer = MeshNode(Store.open(tmp_path / "c"), SigningKey(bytes([0x73]) * 32), cfg)
    await dialer.start()
    try:
        await until(lambda: dialer.stats.dial_failed >= 1, 10, "the first failed handshake")
        first = dialer.stats.dial_failed
        await asyncio.sleep(4.0)  # the span counted over, not a wait for an outcome
        dials = dialer.stats.dial_failed - first
    finally:
        await dialer.stop()
        await node_a.stop()
    # Pauses 0.1, 0.2, 0.4, 0.8, then 1 s (±20%): at most 8 dials in 4 s; libzmq's own
    # reconnects every 100 ms made about 40.
    assert 2 <= dials <= 8, dials


async def test_a_banned_peer_is_told_it_is_banned_not_that_its_key_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried (an outside tester): a peer banned after its strikes, restarted, logged "the peer
    refused our key (400)" and went looking at allow-lists. Must hold: its dialer says the
    peer has banned it for a while, and why."""
    a_key, b_key = A.verify_key.encode(), B.verify_key.encode()
    node_a = MeshNode(Store.open(tmp_path / "a"), A, quick_mesh_config([], {b_key}))
    await node_a.start()
    banned = node_a.add_peer(b_key, "")
    assert banned is not None
    for _ in range(node_a.cfg.max_strikes):
        node_a._strike(banned, "malformed messages (the test's stand-in for them)")
    cfg_b = quick_mesh_config([PeerSpec(a_key, node_a.endpoint)], {a_key})
    node_b = MeshNode(Store.open(tmp_path / "b"), B, cfg_b)
    with caplog.at_level(logging.WARNING, logger="gibsey.mesh"):
        await node_b.start()
        try:
            await until(lambda: node_b.stats.dial_failed >= 1, 10, "B's dial refused")
        finally:
            await node_b.stop()
            await node_a.stop()
    said = [r.getMessage() for r in caplog.records if "handshake with a peer" in r.getMessage()]
    assert said and "the peer has banned us for a while (500: it counted malformed" in said[0]
    assert "refused our key" not in caplog.text


async def test_two_nodes_with_one_key_are_said_before_they_sign(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried (an outside tester): a data directory copied to a second node; both ran, and
    nothing was said until their next entries forked the feed (both lost). Must hold: a peer
    they both dial says that two nodes speak with one key, naming both endpoints, before
    either signs anything."""
    twin = SigningKey(bytes([0x74]) * 32)
    twin_key, a_key = twin.verify_key.encode(), A.verify_key.encode()
    node_a = MeshNode(Store.open(tmp_path / "a"), A, quick_mesh_config([], {twin_key}))
    await node_a.start()
    twins = [
        MeshNode(
            Store.open(tmp_path / name),
            twin,
            quick_mesh_config([PeerSpec(a_key, node_a.endpoint)], {a_key}),
        )
        for name in ("c", "copy-of-c")
    ]
    with caplog.at_level(logging.WARNING, logger="gibsey.mesh"):
        for node in twins:
            await node.start()
        try:
            await until(lambda: node_a.stats.one_key_two_nodes >= 1, 20, "the twins said")
        finally:
            for node in twins:
                await node.stop()
            await node_a.stop()
    said = next(r.getMessage() for r in caplog.records if "two nodes speak" in r.getMessage())
    assert twin_key.hex()[:16] in said
    assert twins[0].endpoint in said and twins[1].endpoint in said
