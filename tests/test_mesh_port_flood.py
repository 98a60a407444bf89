"""A stranger holding connections to the mesh port cannot take the node's file descriptors.

Tried (an outside tester, no key): plain TCP connections to the mesh port, each held open with
nothing sent and opened again as the node closed it. libzmq kept each for its 30 s handshake
timeout, and at ~275 a second the node ran out of descriptors: the gateway answered nobody, the
run record could not be written. What must hold: past max_peers + MAX_HANDSHAKING open at once,
the port is closed (every connection on it with it), said and counted (`flooded`), and it
listens again after SHED_S, where a member still meets the node and syncs.

Real parts: MeshNodes with real ZeroMQ, CurveZMQ with real keys, on loopback; the stranger's
connections are real TCP sockets. The bounds are lowered here (16 handshakes, a 1 s pause) and
the handshake timeout raised, so only the shedding can close the stranger's connections.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.harness.waiting import until
from gibsey.ledger.store import Store
from gibsey.mesh import node as mesh_node
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import MeshNode, Refusal
from tests.mesh_support import quick_mesh_config

pytestmark = pytest.mark.timeout(90)

NODE = SigningKey(bytes([0x70]) * 32)
MEMBER = SigningKey(bytes([0x71]) * 32)
HOLDS = 16 + 4  # MAX_HANDSHAKING as lowered here, plus max_peers
STRANGERS = 3 * HOLDS
MINT = {"actor": "visitor:1", "amount": 1, "ritual": "dial"}


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Read what the node sends (its ZMTP greeting) until it closes the connection."""
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass
    return True


async def test_a_flood_of_idle_connections_closes_the_port_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mesh_node, "MAX_HANDSHAKING", 16)
    monkeypatch.setattr(mesh_node, "SHED_S", 1.0)
    monkeypatch.setattr(mesh_node, "HANDSHAKE_S", 120.0)  # no timeout closes them here
    caplog.set_level(logging.DEBUG, logger="gibsey.mesh")
    member_key = MEMBER.verify_key.encode()
    cfg = quick_mesh_config([], {member_key})
    cfg.max_peers = 4
    store = Store.open(tmp_path / "node")
    node = MeshNode(store, NODE, cfg)
    await node.start()
    host, port = node.endpoint.removeprefix("tcp://").rsplit(":", 1)
    held: list[asyncio.StreamWriter] = []
    member_store = Store.open(tmp_path / "member")
    member = MeshNode(
        member_store,
        MEMBER,
        quick_mesh_config([PeerSpec(NODE.verify_key.encode(), node.endpoint)], {node.me}),
    )
    try:
        readers = []
        for _ in range(STRANGERS):
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except ConnectionRefusedError:
                continue  # the port closed meanwhile: what must happen
            readers.append(reader)
            held.append(writer)
        await until(lambda: node.stats.flooded >= 1, 30, "the port closed for the flood")
        # Every connection the stranger holds is closed by the node (its timeout is 120 s).
        assert all(await asyncio.wait_for(asyncio.gather(*map(_closed, readers)), 30))
        # And the port listens again: a member meets the node and syncs an entry from it.
        entry = await asyncio.to_thread(store.append, NODE, "mint", MINT)
        await member.start()
        await until(lambda: member_store.head(node.me) is not None, 30, "the member's sync")
        assert member_store.head(node.me).hash == entry.hash  # type: ignore[union-attr]
    finally:
        for writer in held:
            writer.close()
        await member.stop()
        await node.stop()
        member_store.close()
        store.close()
    said = [r.getMessage() for r in caplog.records if Refusal.FLOODED.value in r.getMessage()]
    assert said and f"the port holds {HOLDS}): closed for 1 s" in said[0], said
    again = [r for r in caplog.records if r.getMessage().startswith("mesh: listening on")]
    assert again and again[0].getMessage().endswith(" again")
    assert all(r.levelno == logging.DEBUG for r in again)  # a long flood: one line a pause
