"""Strangers on the node's broker (issue 16, item 3): MQTT has no authentication of its own.

Any client that reaches the broker can publish. What must hold whatever the broker: changes that
alter what the node does (`vm/load`, `agent/reload`) carry an operator's ed25519 signature and
are fresh, else they are refused with a `safety/alert` and change nothing; events of the kinds
only the node emits, naming the node, that it did not send are not acted on. And the production
Mosquitto drop-in itself refuses anonymous clients and keeps each client to its topics.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gibsey.core.config import ConfigError, NodeConfig, validate_section
from gibsey.core.mqtt import (
    ClientSettings,
    ConnectRefused,
    Session,
    broker_credentials,
    new_client_id,
    redact_url,
)
from gibsey.harness.mosquitto import PRODUCTION_DROPIN
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.glyph.vm.asm import assemble
from gibsey.node.image import firstboot
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory, started
from tests.events import raw_event, signed_event, topic

# The program: bound to symbol 6, every turn mints 1000 to whoever turned.
MINT_1000 = "    LDT actor\n    PUSH 1000\n    MINT\n    HALT\n"
WATCHED = ("safety/alert", "vm/loaded", "gift/txn", "ritual/performed")
NOT_AUTHORISED = 135  # paho's reason code (MQTT 5's) for 3.1.1's CONNACK "not authorised"


@asynccontextmanager
async def _node(data: Path, broker: Mosquitto, operators: list[str]) -> AsyncIterator[Node]:
    config = GibseyConfig()
    config.node.operators = operators
    node = Node(data, config)
    async with started(node, broker.url):
        yield node


def _load(code: str) -> dict[str, Any]:
    return {"symbol": 6, "rotation": 0, "bytecode": base64.b64encode(assemble(code)).decode()}


async def _turn(col: Collector, nid: str, actor: str) -> dict[str, Any]:
    """One visitor's turn of symbol 6, Read; the mint it caused (gift/txn)."""
    await col.publish(
        topic(nid, "glyph/rotated"),
        raw_event(nid, "glyph/rotated", {"symbol": 6, "rotation": 0}, actor=actor),
    )

    def minted(c: Collector) -> dict[str, Any] | None:
        found = [e["payload"] for e in c.of_kind("gift/txn")]
        return next((t for t in found if t["receiver"] == actor), None)

    result: dict[str, Any] = await col.wait_for(minted)
    return result


def _alerts(col: Collector, reason: str) -> list[dict[str, Any]]:
    return [a["payload"] for a in col.of_kind("safety/alert") if a["payload"]["reason"] == reason]


async def test_an_anonymous_vm_load_is_refused_and_mints_nothing(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: the issue's reproduction. An unsigned client binds a program minting 1000 per turn
    to symbol 6, then `mallory` turns it once (before: mallory 3001). Must hold: refused with a
    safety/alert naming why, no vm/loaded, the default program still runs: mallory gets what
    alice got before the attack (1), and the ledger verifies."""
    async with _node(tmp_path / "data", mosquitto, []) as node:
        nid = node.node_id
        col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
        before = await _turn(col, nid, "alice")
        await col.publish(
            topic(nid, "vm/load"), raw_event(nid, "vm/load", _load(MINT_1000), actor="mallory")
        )
        refused = await col.wait_for(lambda c: _alerts(c, "operator_refused"))
        assert "unsigned" in refused[0]["detail"]
        after = await _turn(col, nid, "mallory")
        assert after["amount"] == before["amount"] == 1
        assert not col.of_kind("vm/loaded")
        ledger = node.parts.ledger
        assert ledger is not None
        assert ledger.view().economy.balance("mallory") == 1


async def test_a_vm_load_signed_by_a_stranger_key_is_refused(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a vm/load well signed, but by a key the node does not list. Must hold: refused
    (`operator_refused`, the key named), nothing bound."""
    async with _node(tmp_path / "data", mosquitto, []) as node:
        nid = node.node_id
        col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
        stranger = SigningKey.generate()
        await col.publish(
            topic(nid, "vm/load"),
            signed_event(nid, "vm/load", _load(MINT_1000), stranger, actor="mallory"),
        )
        refused = await col.wait_for(lambda c: _alerts(c, "operator_refused"))
        assert "not one of this node's operators" in refused[0]["detail"]
        assert (await _turn(col, nid, "mallory"))["amount"] == 1
        assert not col.of_kind("vm/loaded")


async def test_an_operator_signed_vm_load_binds_and_its_replay_is_refused(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: an operator listed in `[node] operators` binds a program (signed); the same bytes
    are published again after the node restarted (its dedup window forgotten), and a second
    change signed with an old lamport. Must hold: the first binds (vm/loaded, the next turn runs
    it); the replay and the stale one are refused with a reason and bind nothing."""
    operator = SigningKey.generate()
    keys = [bytes(operator.verify_key).hex()]
    data = tmp_path / "data"
    async with _node(data, mosquitto, keys) as node:
        nid = node.node_id
        col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
        lamport = node.clock.value + 1
        change = signed_event(nid, "vm/load", _load(MINT_1000), operator, lamport=lamport)
        await col.publish(topic(nid, "vm/load"), change)
        await col.wait_for(lambda c: c.of_kind("vm/loaded"))
        assert (await _turn(col, nid, "ada"))["amount"] == 1000
    async with _node(data, mosquitto, keys) as node:
        col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
        await col.publish(topic(nid, "vm/load"), change)
        stale = signed_event(nid, "vm/load", _load("    HALT\n"), operator, lamport=lamport)
        await col.publish(topic(nid, "vm/load"), stale)
        refused = await col.wait_for(
            lambda c: len(found := _alerts(c, "operator_refused")) >= 2 and found
        )
        assert all("replayed or stale" in a["detail"] for a in refused)
        assert not col.of_kind("vm/loaded")


async def test_forged_events_naming_the_node_are_not_its_own(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: a stranger publishes, naming the node, a `ritual/performed`, a `safety/alert` and a
    `vm/loaded` it never sent. Must hold: none is dispatched to the node's handlers (the router
    counts them as `forged_own`, they are not among its accepted events), each is reported; a
    visitor's turn naming the node still runs."""
    async with _node(tmp_path / "data", mosquitto, []) as node:
        nid = node.node_id
        col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
        forged: dict[str, dict[str, Any]] = {
            "ritual/performed": {"symbol": 1, "rotation": 0, "state": 4, "cause": "x"},
            "safety/alert": {"reason": "fake_fire", "detail": "evacuate"},
            "vm/loaded": {"symbol": 1, "rotation": 0, "program": "x", "version": 9},
        }
        for kind, payload in forged.items():
            await col.publish(topic(nid, kind), raw_event(nid, kind, payload, actor="mallory"))
        await col.wait_for(lambda c: len(_alerts(c, "forged_own")) >= 3)
        stats = node.router.stats
        assert stats.rejected["forged_own"] == 3
        assert stats.by_kind["vm/loaded"] == 0
        assert stats.by_kind["ritual/performed"] == 0
        assert (await _turn(col, nid, "visitor"))["amount"] == 1


# ---- the production broker ---------------------------------------------------------------------


def _production_broker(tmp_path: Path) -> Mosquitto:
    """images/mosquitto/gibsey.conf closed by gibsey-auth.conf beside it, under a Debian-like main
    file, its users and ACL made by first boot's own function, in a temp folder."""
    return Mosquitto(tmp_path / "mosquitto", dropin=PRODUCTION_DROPIN, closed=True).start()


def _as(broker: Mosquitto, user: str | None) -> ClientSettings:
    return ClientSettings(broker.url_as(user), new_client_id(user or "anonymous"))


async def test_the_production_broker_refuses_an_anonymous_client(tmp_path: Path) -> None:
    """Tried: an anonymous client CONNECTs to the production drop-in's broker (the issue: it had
    `allow_anonymous true` on every interface). Must hold: refused at CONNECT (not authorised),
    and so is a known user with a wrong password; the node's user is let in."""
    broker = _production_broker(tmp_path)
    try:
        with pytest.raises(ConnectRefused) as refused:
            async with Session(_as(broker, None)):
                pass
        assert refused.value.reason_code == NOT_AUTHORISED
        wrong = f"mqtt://gibsey-dashboard:wrong@127.0.0.1:{broker.port}"
        with pytest.raises(ConnectRefused):
            async with Session(ClientSettings(wrong, new_client_id("wrong"))):
                pass
        async with Session(_as(broker, "gibsey-node")):
            pass
    finally:
        broker.stop()


async def test_a_dashboard_cannot_publish_what_only_the_node_may(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried: the dashboard's user (read-only, but for visitors' inputs) publishes a vm/load
    naming the node and overwrites its retained node/status, then one turn of the dial. Must
    hold: the broker drops the two (a subscriber with the node's user sees only the turn, which
    arrives after them from the same client, in order); a real node on the broker, with its own
    user, performs the turn and its status stays its own."""
    broker = _production_broker(tmp_path)
    try:
        node = Node(tmp_path / "data", GibseyConfig())
        async with started(node, broker.url):
            nid = node.node_id
            async with Session(_as(broker, "gibsey-node")) as watcher:
                await watcher.subscribe("gibsey/v1/#")
                async with Session(_as(broker, "gibsey-dashboard")) as dashboard:
                    load = raw_event(nid, "vm/load", _load(MINT_1000), actor="mallory")
                    await dashboard.publish(topic(nid, "vm/load"), load)
                    fake = b'{"state": "offline", "node": "%s"}' % nid.encode()
                    await dashboard.publish(topic(nid, "node/status"), fake, retain=True)
                    turn = raw_event(nid, "glyph/rotated", {"symbol": 6, "rotation": 0})
                    await dashboard.publish(topic(nid, "glyph/rotated"), turn)
                seen = await _until(watcher, topic(nid, "glyph/rotated"))
            assert [t for t, _ in seen if "/vm/load" in t] == []
            assert [p for t, p in seen if t.endswith("/node/status") and p == fake] == []
            async with Session(_as(broker, "homeassistant")) as ha:
                await ha.subscribe(topic(nid, "node/status"))
                status = await anext(ha.messages())
            assert b'"state":"online"' in status.payload.replace(b" ", b"")
    finally:
        broker.stop()


async def _until(session: Session, last: str) -> list[tuple[str, bytes]]:
    """What arrives on `session` up to and with the first message on `last`."""
    seen: list[tuple[str, bytes]] = []
    async for msg in session.messages():
        seen.append((msg.topic, msg.payload))
        if msg.topic == last:
            return seen
    raise AssertionError(f"the session ended before anything arrived on {last}")


def test_first_boot_makes_each_client_a_password_once(tmp_path: Path) -> None:
    """Tried: first boot run twice. Must hold: one random password per broker user, in files
    0600 that the second run keeps (rotating is deleting one), and the broker's passwd (hashed)
    and acl, 0600, remade from them."""
    secrets, broker_files = tmp_path / "secrets", tmp_path / "etc"
    first = firstboot.mqtt_credentials(secrets, broker_files)
    assert sorted(first) == sorted(firstboot.MQTT_USERS)
    assert len(set(first.values())) == len(first)
    assert firstboot.mqtt_credentials(secrets, broker_files) == first
    for path in [*secrets.iterdir(), broker_files / "passwd", broker_files / "acl"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    passwd = (broker_files / "passwd").read_text()
    assert all(password not in passwd for password in first.values())  # hashed


def test_the_config_names_operators_and_the_broker_password(tmp_path: Path) -> None:
    """Tried: an operator that is no key; a broker password kept in a file. Must hold: the bad
    key is refused naming the key; the password reaches the URL the node connects with, and no
    message shows it."""
    with pytest.raises(ConfigError, match="operators"):
        validate_section(NodeConfig, "node", {"operators": ["not-a-key"]}, "gibsey.toml", {})
    secret = tmp_path / "node.password"
    secret.write_text("s3cret/+\n")
    config = validate_section(
        NodeConfig,
        "node",
        {"broker": "mqtt://gibsey-node@127.0.0.1:1883", "broker_password_file": str(secret)},
        "gibsey.toml",
        {},
    )
    assert broker_credentials(config.broker) == ("gibsey-node", "s3cret/+")
    assert "s3cret" not in redact_url(config.broker)
