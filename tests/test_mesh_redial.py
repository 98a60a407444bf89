"""A peer that refused our handshake once is dialed again: libzmq never reconnects a session
whose handshake failed, so a node configured before its peer listed it (how a technician sets
up a room, one node after another), or banned by it for a while, stayed cut off from it until
it restarted. Real MeshNodes, real ZeroMQ with CurveZMQ and real keys, on loopback."""

from __future__ import annotations

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
