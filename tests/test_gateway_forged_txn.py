"""A gift/txn is shown by the gateway only when an entry the node holds backs it.

Anyone on the broker may publish a well-formed gift/txn naming the node, or any other node (a
made-up one too); the ledger never moves for an announcement, but the dashboard, /api/events
and the live streams showed a gift nobody gave. Real node, real gateway, real Mosquitto, the
real `gibsey ledger` commands in their own processes, a real entry of another node's key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from gibsey.core.identity import load_or_create
from gibsey.harness.waiting import until
from gibsey.ledger.announce import txn_of
from gibsey.ledger.entry import Entry
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import Store
from tests.conftest import CollectorFactory
from tests.events import raw_event, topic
from tests.gateway_support import AUTH, GatewayNode, gateway_node
from tests.test_ledger_announce import ledger_cli

__all__ = ["gateway_node"]


async def _txns(gw: GatewayNode) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await gw.http.get("/api/events?kind=gift/txn")).json()
    return [e["payload"] for e in events]


async def test_a_forged_gift_is_not_shown_and_a_real_one_is(
    gateway_node: GatewayNode, collector_factory: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried, in order: `gibsey ledger mint`; a gift/txn naming no entry, one naming an entry
    hash nobody stored, one copying the real mint's hash with another amount (all from a
    stranger's client); `gibsey ledger gift`; the mint's announcement replayed word for word
    under a new id. Must hold: /api/events shows the real mint and gift once each, exactly as
    announced, and nothing else; the hub counts four not shown, and the log says so once, not
    once each."""
    caplog.set_level(logging.WARNING, logger="gibsey.gateway.hub")
    gw = gateway_node
    nid, data = gw.node.node_id, gw.node.data_dir
    await _first_mint_shown(gw)
    real_mint = (await _txns(gw))[0]

    col = await collector_factory(gw.broker.port, topic(nid, "gift/txn"))
    forged: list[dict[str, Any]] = [
        {"type": "gift", "giver": "ada", "receiver": "mallory", "amount": 1000},
        {"type": "gift", "giver": "ada", "receiver": "mallory", "amount": 1000, "entry": "ab" * 32},
        {**real_mint, "amount": 1000},
    ]
    for body in forged:
        await col.publish(topic(nid, "gift/txn"), raw_event(nid, "gift/txn", body, actor="ada"))
    done = await asyncio.to_thread(ledger_cli, data, "gift", "ada", "bob", "2")
    assert done.returncode == 0, done.stderr
    await asyncio.wait_for(_until_shown(gw, 2), 30)  # published after the forged ones
    # The real mint's announcement replayed, word for word but for a new event id: a fourth.
    await col.publish(topic(nid, "gift/txn"), raw_event(nid, "gift/txn", real_mint, actor="ada"))
    await until(lambda: gw.gateway.hub.unrecorded == 4, 30, "the replay judged")

    shown = await _txns(gw)
    assert [(t["type"], t["giver"], t["receiver"], t["amount"]) for t in shown] == [
        ("mint", "", "ada", 5),
        ("gift", "ada", "bob", 2),
    ]
    hub = gw.gateway.hub
    assert hub.unrecorded == 4
    said = [r.getMessage() for r in caplog.records if "not shown" in r.getMessage()]
    assert len(said) == 1 and "1 gift/txn" in said[0], said


async def test_a_gift_naming_another_node_is_shown_only_as_its_entry_says(
    gateway_node: GatewayNode,
    collector_factory: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Tried, in order, from a stranger's client: a mint of 1,000,000 to mallory naming a
    made-up node and an entry hash nobody stored; one naming that node and no entry; a real
    peer's mint (its own key, imported into the node's ledger as the mesh would) announced
    under the peer's node id with another amount, then with its true payload, then that true
    announcement replayed under a new id; then `gibsey ledger mint` on the node, the sync
    point. Must hold: /api/events and a live stream show the peer's mint and the node's mint,
    exactly as announced, and nothing else; the hub counts four not shown, the log says so
    once."""
    caplog.set_level(logging.WARNING, logger="gibsey.gateway.hub")
    gw = gateway_node
    data = gw.node.data_dir
    (data / "gibsey.toml").write_text(f'[node]\nbroker = "{gw.broker.url}"\n')
    peer_id, entry = await asyncio.to_thread(_peer_mint, tmp_path / "peer", data)
    assert peer_id != gw.node.node_id
    true = txn_of(entry).model_dump(exclude_none=True)
    stream = gw.gateway.hub.subscribe(frozenset({"gift/txn"}))

    col = await collector_factory(gw.broker.port, topic(peer_id, "gift/txn"))
    fake = {"type": "mint", "receiver": "mallory", "amount": 1_000_000, "entry": "deadbeef" * 8}
    tried: list[tuple[str, dict[str, Any]]] = [
        ("nfakepeer", fake),
        ("nfakepeer", {k: v for k, v in fake.items() if k != "entry"}),
        (peer_id, {**true, "amount": 1_000_000}),
        (peer_id, true),
        (peer_id, true),  # the same announcement, a new event id
    ]
    for node, body in tried:
        await col.publish(topic(node, "gift/txn"), raw_event(node, "gift/txn", body, actor="x"))
    done = await asyncio.to_thread(ledger_cli, data, "mint", "ada", "5")
    assert done.returncode == 0, done.stderr
    # The sync point: the node's mint, announced after all those tried, is shown (the hub
    # judges events in the order they arrive).
    await asyncio.wait_for(_until_received(gw, "ada"), 30)

    expect = [("mint", "eve", 7, peer_id), ("mint", "ada", 5, gw.node.node_id)]
    events = (await gw.http.get("/api/events?kind=gift/txn")).json()
    shown = [
        (e["payload"]["type"], e["payload"]["receiver"], e["payload"]["amount"], e["node"])
        for e in events
    ]
    assert shown == expect
    assert events[0]["payload"] == true
    live = []
    while not stream.queue.empty():
        ev = stream.queue.get_nowait()
        assert ev is not None
        live.append((ev.payload["type"], ev.payload["receiver"], ev.payload["amount"], ev.node))
    assert live == expect
    await until(lambda: gw.gateway.hub.unrecorded == 4, 30, "the forgeries counted")
    said = [r.getMessage() for r in caplog.records if "not shown" in r.getMessage()]
    assert len(said) == 1 and "1 gift/txn" in said[0] and "nfakepeer" in said[0], said


async def test_the_nodes_own_gift_replayed_under_a_new_id_is_shown_once(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """Tried: `gibsey ledger mint` of 5 to ada, a gift of 2 from ada to bob through the node's
    own gateway (POST /api/ledger/gift: the node announces it itself), then that announcement
    replayed word for word by a stranger under a new event id, then `gibsey ledger mint` again,
    the sync point. Must hold: /api/events shows the two mints and the gift once each, and the
    hub counts the replay as not shown."""
    gw = gateway_node
    nid, data = gw.node.node_id, gw.node.data_dir
    await _first_mint_shown(gw)
    answer = await gw.http.post(
        "/api/ledger/gift", json={"giver": "ada", "receiver": "bob", "amount": 2}, headers=AUTH
    )
    assert answer.status_code == 201, answer.text
    await asyncio.wait_for(_until_shown(gw, 2), 30)
    own_gift = (await _txns(gw))[1]
    assert own_gift["type"] == "gift"

    col = await collector_factory(gw.broker.port, topic(nid, "gift/txn"))
    await col.publish(topic(nid, "gift/txn"), raw_event(nid, "gift/txn", own_gift, actor="ada"))
    done = await asyncio.to_thread(ledger_cli, data, "mint", "cy", "1")
    assert done.returncode == 0, done.stderr
    await asyncio.wait_for(_until_received(gw, "cy"), 30)

    shown = [(t["type"], t["receiver"], t["amount"]) for t in await _txns(gw)]
    assert shown == [("mint", "ada", 5), ("gift", "bob", 2), ("mint", "cy", 1)]
    assert gw.gateway.hub.unrecorded == 1


async def _first_mint_shown(gw: GatewayNode) -> None:
    """`gibsey ledger mint ada 5` beside the node (configured to announce on its broker), until
    the gateway shows it."""
    data = gw.node.data_dir
    (data / "gibsey.toml").write_text(f'[node]\nbroker = "{gw.broker.url}"\n')
    done = await asyncio.to_thread(ledger_cli, data, "mint", "ada", "5")
    assert done.returncode == 0, done.stderr
    await asyncio.wait_for(_until_shown(gw, 1), 30)


def _peer_mint(peer_dir: Path, node_data: Path) -> tuple[str, Entry]:
    """A mint of 7 to eve in the feed of another node's key, imported into the node's ledger
    (through a connection of its own, as the mesh's process does): the peer's node id and the
    entry."""
    peer_dir.mkdir()
    ident = load_or_create(peer_dir)
    peer = Ledger.open(peer_dir, ident.signing_key)
    try:
        entry = peer.mint("eve", 7, "test")
    finally:
        peer.close()
    store = Store.open(node_data)
    try:
        store.import_entry(entry.raw)
    finally:
        store.close()
    return ident.node_id, entry


async def _until_received(gw: GatewayNode, receiver: str) -> None:
    while all(t["receiver"] != receiver for t in await _txns(gw)):
        await asyncio.sleep(0.05)


async def _until_shown(gw: GatewayNode, n: int) -> None:
    while len(await _txns(gw)) < n:
        await asyncio.sleep(0.05)
