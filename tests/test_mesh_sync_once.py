"""`gibsey mesh sync` (MeshNode.sync_once) of a history of several rounds, from a peer slow to
answer one of them.

Tried: a serving node with 5,000 entries (three rounds of at most 2,048), two real MeshNodes
over ZeroMQ, the syncing one not listening (as `gibsey mesh sync` runs it: only its own rounds
bring entries). The serving node answers the second round only once the syncing node has stored
the whole first one (a loaded Pi is that slow). Before, a round's "the peer has more" was
cleared when the next round was asked for, so sync_once saw a round without more and an empty
inbox in between and returned: `gibsey mesh sync` printed success with 2,048 of 5,000 entries.
Must hold: sync_once returns only with the serving node's heads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from gibsey.ledger.store import Store
from gibsey.mesh import wire
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import MeshNode
from tests.mesh_support import quick_mesh_config

ENTRIES = 5000
GIFT = {"from": "london-fox", "to": "glyph-marrow", "amount": 3, "memo": "for the dial"}
SERVING = SigningKey(bytes([0x61]) * 32)
SYNCING = SigningKey(bytes([0x62]) * 32)


def _history(data: Path) -> Store:
    store = Store.open(data, synchronous="OFF")
    for _ in range(ENTRIES // 500):
        store.append_many(SERVING, [("gift", GIFT)] * 500)
    return store


def _slow_second_answer(serving: MeshNode, syncing: MeshNode) -> list[int]:
    """Hold the serving node's answer to the second round until the syncing node has stored
    everything of the first and a moment has passed; the rounds answered, counted."""
    real = serving._on_sync
    answered: list[int] = []
    held: list[asyncio.Task[None]] = []

    async def later(args: tuple[Any, ...]) -> None:
        peer = syncing.peers[SERVING.verify_key.encode()]
        while peer.inbox_entries:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # sync_once looks every 10 ms
        real(*args)

    def on_sync(*args: Any) -> None:
        answered.append(len(answered) + 1)
        if len(answered) == 2:
            held.append(asyncio.ensure_future(later(args)))
        else:
            real(*args)

    serving._on_sync = on_sync  # type: ignore[method-assign,assignment]
    return answered


async def test_sync_once_waits_for_every_round_of_a_slow_peer(tmp_path: Path) -> None:
    store = _history(tmp_path / "serving")
    assert store.count() > 2 * wire.MAX_ROUND  # three rounds at least
    fresh = Store.open(tmp_path / "fresh")
    serving_key, syncing_key = SERVING.verify_key.encode(), SYNCING.verify_key.encode()
    serving = MeshNode(store, SERVING, quick_mesh_config([], {syncing_key}), listen=True)
    await serving.start()
    syncing = MeshNode(fresh, SYNCING, quick_mesh_config([], set()), listen=False)
    await syncing.start()
    answered = _slow_second_answer(serving, syncing)
    try:
        peer = await syncing.sync_once(PeerSpec(serving_key, serving.endpoint), timeout=60)
    finally:
        await syncing.stop()
        await serving.stop()
    assert len(answered) >= 3
    assert fresh.heads() == store.heads()
    assert peer.entries_in >= store.count()
    fresh.close()
    store.close()
