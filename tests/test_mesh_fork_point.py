"""Where a fork is proved: at the seq where the two chains part, so every node quarantines the
same entries and counts the same balances (CANONICAL.md section 3, proofs with segments)."""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from gibsey.harness.waiting import until
from gibsey.ledger.store import Store
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import MeshNode
from tests.mesh_support import balances, quick_mesh_config

TWIN = SigningKey(bytes([0x75]) * 32)  # one key in two data directories
PEER = SigningKey(bytes([0x76]) * 32)


def _mints(store: Store, actor: str, n: int) -> list[bytes]:
    """n mints to `actor` on TWIN's feed, appended as one group (one signed head)."""
    body = {"actor": actor, "amount": 1, "ritual": "read"}
    return [e.raw for e in store.append_many(TWIN, [("mint", body)] * n)]


async def test_a_fork_inside_a_group_is_proved_where_the_chains_part(tmp_path: Path) -> None:
    """Tried (an outside tester): a restored node re-signed seqs 63..66 of its feed (one group,
    63..65 unsigned) while its peers held others there. The proof was made at 66, the seq
    where the version vectors differed: each node kept counting its own branch's 63..65, and
    the balances never converged. Must hold: the proof is at the first seq where the chains
    part (here 4, the peer's head at 8), on both nodes, and both count the same balances."""
    original, twin = Store.open(tmp_path / "original"), Store.open(tmp_path / "twin")
    shared = _mints(original, "ada", 3)  # seqs 1..3, both chains
    twin.import_many(shared)
    ours = _mints(original, "visj", 5)  # seqs 4..8, one group: 4..7 unsigned, 8 its head
    _mints(twin, "visk", 5)  # the twin's 4..8: parts from the original at 4
    peer_store = Store.open(tmp_path / "peer")
    peer_store.import_many(shared + ours)  # the peer had the original's group
    original.close()
    twin_key, peer_key = TWIN.verify_key.encode(), PEER.verify_key.encode()
    peer = MeshNode(peer_store, PEER, quick_mesh_config([], {twin_key}))
    await peer.start()
    node = MeshNode(twin, TWIN, quick_mesh_config([PeerSpec(peer_key, peer.endpoint)], {peer_key}))
    await node.start()
    try:
        await until(
            lambda: twin.quarantine() and peer_store.quarantine(), 20, "the fork proved on both"
        )
    finally:
        await node.stop()
        await peer.stop()
    assert twin.quarantine() == {twin_key: 4} == peer_store.quarantine()
    twin.close()
    peer_store.close()
    seen = balances(tmp_path / "twin"), balances(tmp_path / "peer")
    assert seen[0] == seen[1] == {"ada": 3}, seen
