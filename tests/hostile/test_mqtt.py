"""Strangers on the node's broker (issue 16, item 3): MQTT has no authentication of its own.

Any client that reaches the broker can publish. What must hold whatever the broker: changes that
alter what the node does (`vm/load`, `agent/reload`) carry an operator's ed25519 signature and
are fresh, else they are refused with a `safety/alert` and change nothing; events of the kinds
only the node emits, naming the node, that it did not send are not acted on. And the production
Mosquitto drop-in itself refuses anonymous clients and keeps each client to its topics: against a
Mosquitto with the drop-in here, and on the image's own root booted under systemd (first boot
makes the users, the node's unit logs in; slow, root only: skipped with the reason elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gibsey.cli import main
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
from gibsey.harness.waiting import GalleryError, until
from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.service import AgentService
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.glyph.vm.asm import assemble
from gibsey.node.image import firstboot
from tests.agent_support import TEST_AGENT
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
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector_factory: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tried: a vm/load well signed, but by a key the node does not list. Must hold: refused
    (`operator_refused`, the key named, in the node's log too), nothing bound."""
    caplog.set_level(logging.WARNING, logger="gibsey.runtime")
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
    logged = [r.getMessage() for r in caplog.records if r.name == "gibsey.runtime"]
    said = [m for m in logged if m.startswith("refused vm/load ")]
    assert len(said) == 1
    assert " by mallory: " in said[0] and "not one of this node's operators" in said[0]


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
        said = await col.wait_for(lambda c: len(_alerts(c, "forged_own")) >= 3 and c)
        # Each alert names where the forgery was published, and its id in the detail.
        assert sorted(a["topic"] for a in _alerts(said, "forged_own")) == sorted(
            topic(nid, kind) for kind in forged
        )
        stats = node.router.stats
        assert stats.rejected["forged_own"] == 3
        assert stats.by_kind["vm/loaded"] == 0
        assert stats.by_kind["ritual/performed"] == 0
        assert (await _turn(col, nid, "visitor"))["amount"] == 1


async def test_a_forged_branch_proposal_naming_the_node_is_not_its_own(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester, on the open embedded broker): 380 `narrative/change`
    proposals (change "propose", no version: what a glyph's PROPOSE sends) naming the node and
    a new branch each; the node made every branch, a ledger entry signed with its key, and the
    mesh carried them to every peer. Must hold: such a proposal the node did not send is
    `forged_own` (alerted, never dispatched); a merge proposal's announcement (`gibsey story
    propose`: its version the merge commit) still reaches the handlers as a courtesy."""
    async with _node(tmp_path / "data", mosquitto, []) as node:
        nid = node.node_id
        col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
        kind = "narrative/change"
        forged = {"branch": "stranger-was-here", "change": "propose"}
        await col.publish(topic(nid, kind), raw_event(nid, kind, forged, actor="mallory"))
        said = await col.wait_for(lambda c: (found := _alerts(c, "forged_own")) and found)
        assert said[0]["topic"] == topic(nid, kind)
        announced = {"branch": "b", "change": "propose", "version": "ab" * 32}
        await col.publish(topic(nid, kind), raw_event(nid, kind, announced, actor="visitor"))
        assert (await _turn(col, nid, "visitor"))["amount"] == 1  # after both, in order
        stats = node.router.stats
        assert stats.rejected["forged_own"] == 1 and stats.by_kind[kind] == 1


# ---- the production broker ---------------------------------------------------------------------


def _production_broker(tmp_path: Path) -> Mosquitto:
    """images/mosquitto/gibsey.conf under a Debian-like main file, its users and ACL made by
    first boot's own function, in a temp folder."""
    return Mosquitto(tmp_path / "mosquitto", dropin=PRODUCTION_DROPIN).start()


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


# ---- the image: first boot, Mosquitto and the node under systemd --------------------------------

# Run inside the booted image root (as root, with the node's venv): strangers and the dashboard's
# user against the image's broker; prints what happened as JSON.
IMAGE_BROKER_PROBE = """
import asyncio, json, pathlib, uuid
from gibsey.core.mqtt import ClientSettings, ConnectRefused, Session, new_client_id
SECRETS = pathlib.Path("/var/lib/gibsey/mqtt")
NID = pathlib.Path("/var/lib/gibsey/node_id").read_text().strip()

def settings(user):
    login = f"{user}:{(SECRETS / f'{user}.password').read_text().strip()}@" if user else ""
    return ClientSettings(f"mqtt://{login}127.0.0.1:1883", new_client_id(user or "anonymous"))

def topic(kind):
    return f"gibsey/v1/{NID}/{kind}"

def event(kind, payload):
    return json.dumps({"id": uuid.uuid4().hex, "node": NID, "kind": kind, "lamport": 1,
                       "wall": 0.0, "actor": "mallory", "payload": payload}).encode()

async def online_status(user):
    async with Session(settings(user)) as session:
        await session.subscribe(topic("node/status"))
        async for msg in session.messages():
            doc = json.loads(msg.payload)
            if doc.get("state") == "online":
                return doc

async def forge(dashboard):
    forged = {
        "vm/load": event("vm/load", {"symbol": 6, "rotation": 0, "bytecode": "AA=="}),
        "ritual/performed": event("ritual/performed", {"symbol": 6, "rotation": 0, "state": 24}),
        "safety/alert": event("safety/alert", {"reason": "fake_fire", "detail": "evacuate"}),
    }
    for kind, payload in forged.items():
        await dashboard.publish(topic(kind), payload)
    await dashboard.publish(topic("node/status"), b'{"state": "offline"}', retain=True)
    await dashboard.publish("homeassistant/sensor/x/config", b"{}", retain=True)
    return [json.loads(p)["id"] for p in forged.values()]

async def probe():
    out = {"node": NID}
    try:
        async with Session(settings(None)):
            out["anonymous"] = "connected"
    except ConnectRefused as exc:
        out["anonymous"] = exc.reason_code
    out["dashboard_read"] = await asyncio.wait_for(online_status("gibsey-dashboard"), 60)
    async with Session(settings("gibsey-node")) as watcher:
        await watcher.subscribe("gibsey/v1/#")
        await watcher.subscribe("homeassistant/#")
        async with Session(settings("gibsey-dashboard")) as dashboard:
            out["forged_ids"] = await forge(dashboard)
            turn = event("glyph/rotated", {"symbol": 6, "rotation": 0})
            await dashboard.publish(topic("glyph/rotated"), turn)  # a visitor's input: let through
        seen = []
        async for msg in watcher.messages():
            seen.append([msg.topic, msg.payload.decode(errors="replace")])
            if msg.topic == topic("glyph/rotated"):
                break
    out["seen"] = seen
    out["status_after"] = await asyncio.wait_for(online_status("homeassistant"), 60)
    print(json.dumps(out))

asyncio.run(asyncio.wait_for(probe(), 120))
"""


# images/README.md's command (as root already, without its sudo).
DOCTOR_AS_THE_UNIT = (
    "env $(systemctl show -p Environment --value gibsey-node) runuser -u gibsey "
    "/opt/gibsey/.venv/bin/gibsey doctor"
)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_broker_refuses_strangers_and_its_node_logs_in(tmp_path: Path) -> None:
    """Tried: the SD image's units and Mosquitto drop-in booted under systemd (a Debian root in
    systemd-nspawn: first boot, then Mosquitto, then the node's unit as written); an anonymous
    client CONNECTs; the dashboard's user publishes a vm/load, a ritual/performed and a
    safety/alert naming the node, overwrites its retained node/status and a Home Assistant
    discovery config, then one visitor's turn. Must hold: first boot made each client's password
    (0600; the broker's files owned by the root's mosquitto user); the node and its agents' MQTT 5
    link log in as gibsey-node and the node is online; the anonymous client is refused at CONNECT
    (not authorised); a subscriber that may read everything sees none of the dashboard's forged
    publishes, only its turn (after them, from the same client, in order); the dashboard reads
    the node's status, which stays the node's own."""
    from tests.test_supervision import PYTHON, boot_image, wait_active

    box = boot_image(tmp_path / "nspawn")
    try:
        wait_active(box)
        done = box.exec(PYTHON, "-c", IMAGE_BROKER_PROBE, timeout_s=180)
        assert done.returncode == 0, f"{done.stderr}\n{box.journal('gibsey-node')}"
        probe = json.loads(done.stdout)
        owners = box.exec(
            "stat", "-c", "%U %a %n", "/etc/mosquitto/gibsey/passwd", "/etc/mosquitto/gibsey/acl"
        ).stdout.split("\n")
        # Both of the node's connections log in as its user (Mosquitto logs whom it accepted);
        # its agents' MQTT 5 link may come up after the probe is done.
        logins = [
            rf" as gibsey-{probe['node']}-[0-9a-f]{{16}} \(p5, .*u'gibsey-node'\)",
            rf" as gibsey-{probe['node']}-[0-9a-f]{{16}}-agents5 \(p5, .*u'gibsey-node'\)",
        ]

        def logged_in() -> bool:
            broker_log = box.exec("cat", "/var/log/mosquitto/mosquitto.log").stdout
            return all(re.search(login, broker_log) for login in logins)

        box.wait_for(logged_in, 60, "the node and its MQTT 5 link logged in as gibsey-node")
        # As images/README.md says a technician runs it: as the node's user, the unit's settings.
        doctor = box.exec("sh", "-c", DOCTOR_AS_THE_UNIT, timeout_s=120).stdout
    finally:
        box.stop()
    secrets = box.data / firstboot.MQTT_SECRETS
    assert secrets.stat().st_mode & 0o777 == 0o700
    made = {path.name: path.stat().st_mode & 0o777 for path in secrets.iterdir()}
    assert made == {f"{user}.password": 0o600 for user in firstboot.MQTT_USERS}
    assert "the broker refuses anonymous clients" in doctor, doctor
    assert "/var/lib/gibsey/mqtt/gibsey-node.password is private" in doctor, doctor
    assert [line.split()[:2] for line in owners if line] == [["mosquitto", "600"]] * 2
    nid = probe["node"]
    assert probe["anonymous"] == NOT_AUTHORISED
    assert probe["dashboard_read"]["node"] == nid
    seen = probe["seen"]
    assert seen[-1][0] == topic(nid, "glyph/rotated")
    forged = [s for s in seen if any(i in s[1] for i in probe["forged_ids"])]
    assert forged == []
    overwritten = [s for s in seen if s[1] == '{"state": "offline"}' or "/sensor/x/" in s[0]]
    assert overwritten == []
    assert probe["status_after"]["node"] == nid


def test_the_unit_names_the_node_password_file_and_a_bad_one_is_said(tmp_path: Path) -> None:
    """Tried: the image unit's way, GIBSEY_BROKER naming the node's user and
    GIBSEY_BROKER_PASSWORD_FILE its password file; then that file missing, a folder, empty.
    Must hold: the password reaches the URL the node connects with (and no shown form of it);
    each bad file is refused at start in one error naming the variable, the key and the file
    (before: a missing file was ignored and the node only heard the broker's `not authorised`)."""
    secret = tmp_path / "gibsey-node.password"
    secret.write_text("s3cret\n")
    environ = {
        "GIBSEY_BROKER": "mqtt://gibsey-node@127.0.0.1:1883",
        "GIBSEY_BROKER_PASSWORD_FILE": str(secret),
    }
    config = validate_section(NodeConfig, "node", None, "gibsey.toml", environ)
    assert broker_credentials(config.broker) == ("gibsey-node", "s3cret")
    assert "s3cret" not in redact_url(config.broker)
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty").write_text("\n")
    said = {"missing": "no such file", "folder": "cannot be read", "empty": "empty"}
    for bad, says in said.items():
        environ["GIBSEY_BROKER_PASSWORD_FILE"] = str(tmp_path / bad)
        with pytest.raises(ConfigError) as refused:
            validate_section(NodeConfig, "node", None, "gibsey.toml", environ)
        message = str(refused.value)
        assert "GIBSEY_BROKER_PASSWORD_FILE" in message and "broker_password_file" in message
        assert str(tmp_path / bad) in message and says in message, message


def test_doctor_says_an_open_broker_and_a_wide_password_file(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `gibsey doctor` on a node whose broker takes anonymous clients, then on one logging
    in to the production broker with a password file readable by all (0644), then 0600. Must
    hold: the open broker is a warning saying anyone may publish; the wide file a warning with
    the chmod; the closed broker and a 0600 file are said to be fine; the password never shown."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text(f'[node]\nbroker = "{mosquitto.url}"\n')
    main(["doctor", "--data", str(data)])
    out = capsys.readouterr().out
    assert "accepts anonymous clients: anyone who reaches it may publish" in out
    broker = _production_broker(tmp_path)
    try:
        secret = tmp_path / "broker" / "gibsey-node.password"
        secret.parent.mkdir()
        secret.write_text(broker.passwords["gibsey-node"])
        secret.chmod(0o644)
        (data / "gibsey.toml").write_text(
            f'[node]\nbroker = "mqtt://gibsey-node@127.0.0.1:{broker.port}"\n'
            f'broker_password_file = "{secret}"\n'
        )
        main(["doctor", "--data", str(data)])
        wide = capsys.readouterr().out
        secret.chmod(0o600)
        main(["doctor", "--data", str(data)])
        private = capsys.readouterr().out
    finally:
        broker.stop()
    assert f"chmod 600 {secret}" in wide and "other users can read" in wide
    assert "the broker refuses anonymous clients" in wide
    assert f"{secret} is private" in private and "chmod 600" not in private
    assert broker.passwords["gibsey-node"] not in wide + private


def test_the_pi_gen_stage_installs_the_closed_broker_and_the_node_login(tmp_path: Path) -> None:
    """Tried: the SD image's pi-gen stage as `gibsey image build` writes it. Must hold: the
    Mosquitto drop-in it installs is the one tested above (refusing anonymous clients, the users
    and ACL first boot makes), the node's unit logs in as gibsey-node with the password file
    first boot makes, and first boot's unit runs before Mosquitto and is enabled."""
    from gibsey.node.image import cli as cli_image

    fake_lib = tmp_path / "libgibsey_vm.so"
    fake_lib.write_bytes(b"\x7fELF")
    stage = cli_image.prepare_stage(tmp_path / "out", vm_lib=fake_lib)
    files = stage / "01-gibsey" / "files"
    run = (stage / "01-gibsey" / "00-run.sh").read_text()
    dropin = (files / "mosquitto-gibsey.conf").read_text()
    assert dropin == PRODUCTION_DROPIN.read_text()
    settings = [line.split() for line in dropin.splitlines() if line and line[0] != "#"]
    assert ["allow_anonymous", "false"] in settings and ["allow_anonymous", "true"] not in settings
    assert ["password_file", f"/{firstboot.MQTT_BROKER_FILES}/passwd"] in settings
    assert ["acl_file", f"/{firstboot.MQTT_BROKER_FILES}/acl"] in settings
    assert "files/mosquitto-gibsey.conf" in run and "/etc/mosquitto/conf.d/gibsey.conf" in run
    node = (files / "gibsey-node.service").read_text()
    secret = f"{cli_image.DATA_MOUNT}/{firstboot.MQTT_SECRETS}/gibsey-node.password"
    assert "Environment=GIBSEY_BROKER=mqtt://gibsey-node@127.0.0.1:1883\n" in node
    assert f"Environment=GIBSEY_BROKER_PASSWORD_FILE={secret}\n" in node
    assert "--broker" not in node  # the broker is the unit's Environment= (GIBSEY_BROKER) alone
    first = (files / "gibsey-firstboot.service").read_text()
    before = re.search(r"^Before=(.*)$", first, re.M)
    assert before is not None and "mosquitto.service" in before.group(1).split()
    assert "gibsey-firstboot.service" in run.split("systemctl enable", 1)[1]


async def test_the_agents_mqtt5_link_logs_in_and_answers_a_dashboard(tmp_path: Path) -> None:
    """Tried: a node on the production broker (its own user) and a dashboard, with the
    dashboard's user, asking over MQTT 5 with a response topic under gibsey/reply/ (a persona
    that does not exist: answered at once, through the same route as a real answer). Must hold:
    the agents' MQTT 5 side link logs in (as the node: before, it connected anonymously and was
    refused, so no response topic was ever answered) and the answer to this request reaches the
    response topic."""
    broker = _production_broker(tmp_path)
    config = GibseyConfig(agent=AgentConfig.model_validate(TEST_AGENT))
    node = Node(tmp_path / "data", config)
    try:
        async with started(node, broker.url):
            nid = node.node_id
            service = node.parts.agents
            assert service is not None
            await _until_linked(service)
            response = f"gibsey/reply/{new_client_id('dashboard')}"
            dashboard = ClientSettings(
                broker.url_as("gibsey-dashboard"), new_client_id("dashboard"), mqtt5=True
            )
            async with Session(dashboard) as session:
                await session.subscribe(response)
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = response
                props.CorrelationData = b"corr-1"
                ask = {"persona": "nobody", "prompt": "who?", "correlation": "q1"}
                request = raw_event(nid, "agent/request", ask, actor="dashboard")
                await session.publish(topic(nid, "agent/request"), request, properties=props)
                answer = await asyncio.wait_for(anext(session.messages()), 30)
        assert answer.topic == response
        doc = json.loads(answer.payload)
        assert doc["kind"] == "agent/emit" and doc["payload"]["correlation"] == "q1"
    finally:
        broker.stop()


async def _until_linked(service: AgentService) -> None:
    """Until the agents' MQTT 5 link is up (it retries after a refusal: a deadline, no count)."""
    deadline = asyncio.get_running_loop().time() + 20
    while not (service.link is not None and service.link.up):
        assert asyncio.get_running_loop().time() < deadline, "the MQTT 5 link never came up"
        await asyncio.sleep(0.02)


async def test_home_assistant_may_say_it_restarted_and_nothing_else(tmp_path: Path) -> None:
    """Tried: Home Assistant's user, on the production broker with a node on it, reads the node's
    discovery config, publishes its birth message (`homeassistant/status` = online, as it does
    at every start) and then overwrites the discovery config. Must hold: the birth message
    reaches the node, which announces itself again (a second copy of its config arrives); the
    overwrite never arrives (the broker drops it: Home Assistant may write nothing else)."""
    broker = _production_broker(tmp_path)
    try:
        node = Node(tmp_path / "data", GibseyConfig())
        async with started(node, broker.url):
            config_topic = f"homeassistant/device/gibsey_{node.node_id}/config"
            async with Session(_as(broker, "homeassistant")) as ha:
                await ha.subscribe(config_topic)
                arrived = ha.messages()
                announced = (await anext(arrived)).payload  # the retained one
                await ha.publish(config_topic, b'{"hijacked": true}', retain=True)
                await ha.publish("homeassistant/status", b"online")
                again = await asyncio.wait_for(anext(arrived), 30)
        assert again.payload == announced
    finally:
        broker.stop()


async def test_a_retained_turn_is_not_performed_again_at_each_start(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried (an outsider): a turn published retained, then the node started twice. The broker
    hands a retained message to every new subscription, so each start performed it again and
    minted (`retained-evil` 1, 2, 3). Must hold: the retained turn is ignored and counted at
    each start; a live turn after it is performed; `retained-evil` has nothing."""
    from gibsey.core.identity import load_or_create

    data = tmp_path / "data"
    nid = load_or_create(data).node_id
    col = await collector_factory(mosquitto.port, *(topic(nid, k) for k in WATCHED))
    retained = raw_event(nid, "glyph/rotated", {"symbol": 6, "rotation": 0}, actor="retained-evil")
    await col.client.publish(topic(nid, "glyph/rotated"), retained, qos=1, retain=True)
    for start in range(2):
        async with _node(data, mosquitto, []) as node:
            await _turn(col, nid, f"alice-{start}")  # after the retained one, in order
            # The turn, once at each start; not the node's own status, retained by design (the
            # first run's, at the second start), which was counted and called an old event.
            assert node.spine is not None and node.spine.stats.retained_ignored == 1
            performed = [e["actor"] for e in col.of_kind("ritual/performed")]
            assert "retained-evil" not in performed
            assert node.parts.ledger is not None
            assert node.parts.ledger.view().economy.balance("retained-evil") == 0


FLOODS_TRIED = 6
_FLOOD = """
import json, sys
import paho.mqtt.client as mqtt
port, nid, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv311)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
for i in range(n):  # as fast as paho writes them: faster than the node reads
    turn = {"id": f"f{i}", "node": nid, "kind": "glyph/rotated", "lamport": 1, "wall": 0,
            "actor": f"v{i % 500}", "payload": {"symbol": i % 64, "rotation": i % 4,
            "source": f"s{i % 50}"}}
    last = c.publish(f"gibsey/v1/{nid}/glyph/rotated", json.dumps(turn), qos=0)
last.wait_for_publish()
c.disconnect()
c.loop_stop()
"""


async def test_a_broker_that_drops_acknowledgements_in_a_flood_does_not_silence_the_node(
    tmp_path: Path, collector_factory: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried (an outside tester): 15 s of QoS 0 turns, faster than the node reads them. The
    broker's queue to the node filled, and Mosquitto drops every packet past it, the PUBACKs of
    the node's own events among them (eclipse-mosquitto#3542); the 64 messages in flight were
    never acknowledged, and the node published nothing more (no ritual, its status frozen
    "online") until the broker restarted. Here the broker's queue is 10 messages, and floods of
    100,000 turns fill it; the stall bound is lowered to 1 s (the node's: 10 s). Must hold: the
    node ends the stalled connection (ack_stalls), and once the flood ends a visitor's turn is
    performed and its ritual/performed reaches a dashboard."""
    import subprocess
    import sys

    from gibsey.node.spine import spine as spine_module

    monkeypatch.setattr(spine_module, "ACK_STALL_S", 1.0)
    monkeypatch.setattr(spine_module, "ACK_CHECK_S", 0.2)
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf="max_queued_messages 100").start()
    try:
        async with _node(tmp_path / "data", broker, []) as node:
            nid = node.node_id
            assert node.spine is not None
            spine = node.spine
            flood = [sys.executable, "-c", _FLOOD, str(broker.port), nid, "100000"]
            # Whether a flood fills the broker's queue long enough to drop 64 PUBACKs depends on
            # how fast this machine's two processes run (4 floods in 5 did here): flooded again
            # until one has, each time given the time to notice.
            for _ in range(FLOODS_TRIED):
                done = await asyncio.to_thread(subprocess.run, flood, timeout=120, check=False)
                assert done.returncode == 0
                with contextlib.suppress(GalleryError):
                    await until(lambda: spine.stats.ack_stalls >= 1, 5, "a stalled window")
                if spine.stats.ack_stalls:
                    break
            assert spine.stats.ack_stalls >= 1, f"{FLOODS_TRIED} floods left the window moving"
            # What the node had waiting goes out (it had stopped for good), and a dashboard that
            # connects now sees the next turn (one connected before would have had its own
            # packets dropped by the same small queue, the node's backlog coming to it at once).
            await until(lambda: spine.outbox_depth == 0, 60, "the outbox drained")
            col = await collector_factory(broker.port, topic(nid, "ritual/performed"))
            turn = raw_event(nid, "glyph/rotated", {"symbol": 6, "rotation": 0}, actor="after")
            await col.publish(topic(nid, "glyph/rotated"), turn)
            await col.wait_for(
                lambda c: [e for e in c.of_kind("ritual/performed") if e["actor"] == "after"], 30
            )
    finally:
        broker.stop()
