"""A gift/txn naming the node is shown by its gateway only when an entry of its feed backs it.

Anyone on the broker may publish a well-formed gift/txn naming the node; the ledger never moves
for an announcement, but the dashboard and /api/events showed a gift nobody gave. Real node,
real gateway, real Mosquitto, the real `gibsey ledger` commands in their own processes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gibsey.harness.waiting import until
from tests.conftest import CollectorFactory
from tests.events import raw_event, topic
from tests.gateway_support import GatewayNode, gateway_node
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
    (data / "gibsey.toml").write_text(f'[node]\nbroker = "{gw.broker.url}"\n')
    done = await asyncio.to_thread(ledger_cli, data, "mint", "ada", "5")
    assert done.returncode == 0, done.stderr
    await asyncio.wait_for(_until_shown(gw, 1), 30)
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


async def _until_shown(gw: GatewayNode, n: int) -> None:
    while len(await _txns(gw)) < n:
        await asyncio.sleep(0.05)
