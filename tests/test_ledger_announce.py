"""Ledger commands announce on the node's spine: gift/txn and gift/balance on a real broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gibsey.harness.waiting import until
from gibsey.ledger.ledger import Ledger
from tests.brokers import Mosquitto, free_port
from tests.conftest import Collector, CollectorFactory


def ledger_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gibsey", "ledger", *args, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_gift_and_balance_are_announced(
    mosquitto: Mosquitto, tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    data = tmp_path / "node"
    data.mkdir()
    (data / "gibsey.toml").write_text(f'[node]\nbroker = "{mosquitto.url}"\n')
    col: Collector = await collector_factory(mosquitto.port, "gibsey/v1/+/gift/+")
    for args in (("mint", "ada", "5"), ("gift", "ada", "bob", "2"), ("balance",)):
        done = await asyncio.to_thread(ledger_cli, data, *args)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "not announced" not in done.stdout + done.stderr
    await col.wait_for(lambda c: len(c.of_kind("txn")) == 2 and c.of_kind("balance"))
    mint, gift = (e["payload"] for e in col.of_kind("txn"))
    assert (mint["type"], mint["receiver"], mint["amount"]) == ("mint", "ada", 5)
    assert (gift["type"], gift["giver"], gift["receiver"], gift["amount"]) == (
        "gift",
        "ada",
        "bob",
        2,
    )
    ledger = Ledger.open(data)
    try:
        hashes = [e.hash_hex for e in ledger.store.entries_after(ledger.author, 0, 10)]
    finally:
        ledger.close()
    assert [mint["entry"], gift["entry"]] == hashes
    balance = col.of_kind("balance")[0]["payload"]
    assert balance["balances"]["ada"] == 3 and balance["balances"]["bob"] >= 1
    node_id = (data / "node_id").read_text().strip()
    assert all(t.startswith(f"gibsey/v1/{node_id}/gift/") for t, _ in col.messages)
    assert json.loads(col.messages[0][1])["node"] == node_id


def test_without_a_broker_the_entry_is_kept_and_the_command_says_so(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    (data / "gibsey.toml").write_text(f'[node]\nbroker = "mqtt://127.0.0.1:{free_port()}"\n')
    done = ledger_cli(data, "mint", "ada", "5")
    assert done.returncode == 0
    assert done.stdout.startswith("mint appended: seq 1")  # stdout is the answer alone
    assert "recorded, but not announced on MQTT: no broker at" in done.stderr
    shown = ledger_cli(data, "balance", "ada")
    assert "5" in shown.stdout


async def test_a_command_beside_a_node_on_another_embedded_port_announces_there(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried (an outsider): `gibsey up --embedded-port 18850`, then `gibsey ledger mint` beside
    it: "not announced on MQTT: no broker at mqtt://127.0.0.1:1883" (the port was the node's
    command-line choice alone). Must hold: the command finds the running node's embedded broker
    and announces there; once the node stops, the default again."""
    from gibsey.core.announce import RUNNING_BROKER_FILE
    from gibsey.node.config import GibseyConfig
    from gibsey.node.daemon import Node
    from tests.conftest import started

    data = tmp_path / "node"
    config = GibseyConfig()
    config.node.embedded_port = free_port()  # as --embedded-port sets it: not in gibsey.toml
    node = Node(data, config)
    async with started(node, None):
        col = await collector_factory(config.node.embedded_port, "gibsey/v1/+/gift/+")
        done = await asyncio.to_thread(ledger_cli, data, "mint", "ada", "5")
        assert done.returncode == 0 and "not announced" not in done.stdout + done.stderr, done
        await col.wait_for(lambda c: c.of_kind("txn"))
    assert not (data / RUNNING_BROKER_FILE).exists()


async def test_a_command_beside_a_node_started_with_broker_announces_there(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried (an outsider): `gibsey up --broker mqtt://127.0.0.1:18833`, then `gibsey ledger
    gift` beside it: exit 0, "recorded, but not announced on MQTT: no broker at
    mqtt://127.0.0.1:1883"; dashboards never saw the gift. Must hold: the command announces on
    the broker the running node was given; the record of it is private (0600: a URL on the
    command line may hold a password) and gone once the node stops."""
    from gibsey.core.announce import RUNNING_BROKER_FILE
    from gibsey.node.config import GibseyConfig
    from gibsey.node.daemon import Node
    from tests.conftest import started

    data = tmp_path / "node"
    node = Node(data, GibseyConfig())
    async with started(node, mosquitto.url):  # as `gibsey up --broker URL`: not in gibsey.toml
        col = await collector_factory(mosquitto.port, "gibsey/v1/+/gift/+")
        done = await asyncio.to_thread(ledger_cli, data, "mint", "ada", "5")
        assert done.returncode == 0 and "not announced" not in done.stdout + done.stderr, done
        await col.wait_for(lambda c: c.of_kind("txn"))
        assert (data / RUNNING_BROKER_FILE).stat().st_mode & 0o777 == 0o600
    assert not (data / RUNNING_BROKER_FILE).exists()


async def test_a_commands_event_is_ordered_after_the_nodes_own(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside audit): `gibsey ledger gift` beside a running node announced its
    gift/txn at the entry's lamport (2), as the node, while the node's own events were past a
    million: ordered by lamport, the command's event came before events it followed. Must
    hold: the command's event is after every event the node sent before it, and the node's
    next event after the command's."""
    from gibsey.core.envelope import SafetyAlert
    from gibsey.node.config import GibseyConfig
    from gibsey.node.daemon import Node
    from tests.conftest import started

    data = tmp_path / "node"
    node = Node(data, GibseyConfig())
    async with started(node, mosquitto.url):
        col = await collector_factory(mosquitto.port, f"gibsey/v1/{node.node_id}/#")
        before = node.emit("safety/alert", SafetyAlert(reason="before", detail="x"))
        await col.wait_for(lambda c: c.of_kind("alert"))
        done = await asyncio.to_thread(ledger_cli, data, "mint", "ada", "5")
        assert done.returncode == 0 and "not announced" not in done.stdout + done.stderr, done
        await col.wait_for(lambda c: c.of_kind("txn"))
        (txn,) = col.of_kind("txn")
        assert txn["lamport"] > before.lamport
        await until(lambda: node.clock.value >= txn["lamport"], 10, "the node heard it")
        after = node.emit("safety/alert", SafetyAlert(reason="after", detail="x"))
    assert after.lamport > txn["lamport"]
