"""`gibsey mesh status` counts what a peer holds that this node would take.

Real parts: MeshNodes with real ZeroMQ, CurveZMQ with real keys, on loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.harness.waiting import until
from gibsey.ledger.store import Store
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import MeshNode
from tests.mesh_support import quick_mesh_config

pytestmark = pytest.mark.timeout(90)

NODE = SigningKey(bytes([0x70]) * 32)
MEMBER = SigningKey(bytes([0x71]) * 32)
MINT = {"actor": "visitor:1", "amount": 1, "ritual": "dial"}


async def test_a_feed_we_do_not_take_is_not_one_we_lack(tmp_path: Path) -> None:
    """Tried (an outside verifier): a member holding the feed of a key not on our allow-list
    (put straight into its database) showed in `gibsey mesh status` as "we lack 3" for good:
    we refuse that feed (not a member), so it is nothing we lack. Must hold: once in sync,
    we_lack is 0, and the stranger's feed is not held."""
    stranger = SigningKey(bytes([0x72]) * 32)
    member_store = Store.open(tmp_path / "member")
    for _ in range(3):
        await asyncio.to_thread(member_store.append, stranger, "mint", MINT)
    await asyncio.to_thread(member_store.append, MEMBER, "mint", MINT)
    store = Store.open(tmp_path / "node")
    node = MeshNode(store, NODE, quick_mesh_config([], {MEMBER.verify_key.encode()}))
    await node.start()
    member = MeshNode(
        member_store,
        MEMBER,
        quick_mesh_config([PeerSpec(NODE.verify_key.encode(), node.endpoint)], {node.me}),
    )
    try:
        await member.start()
        await until(
            lambda: store.head(MEMBER.verify_key.encode()) is not None, 30, "the member's feed"
        )
        peer = await until(
            lambda: [p for p in node.status()["peers"] if p["heard"]], 30, "a round heard"
        )
        assert peer[0]["we_lack"] == 0, peer
        assert store.head(stranger.verify_key.encode()) is None
    finally:
        await member.stop()
        await node.stop()
        member_store.close()
        store.close()
