"""The event spine against real brokers: Mosquitto and the embedded amqtt broker."""

from __future__ import annotations

import asyncio
import json
import logging
import selectors
import time
from pathlib import Path

import aiomqtt
import pytest

from gibsey.core.envelope import Event, GiftTxn, Payload
from gibsey.harness.waiting import until
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.spine.broker import embedded_broker
from tests.brokers import Mosquitto, free_port
from tests.conftest import Collector, CollectorFactory, RunningNode, started
from tests.events import raw_event, topic


async def test_rotation_runs_a_ritual(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    col: Collector = await collector_factory(running_node.port, topic(nid, "ritual/performed"))
    await col.publish(
        topic(nid, "glyph/rotated"),
        raw_event(nid, "glyph/rotated", {"symbol": 5, "rotation": 3}, event_id="turn-1"),
    )
    rituals = await col.wait_for(lambda c: c.of_kind("ritual/performed"))
    ritual = rituals[0]
    assert ritual["node"] == nid
    assert ritual["actor"] == "visitor"
    assert ritual["payload"]["cause"] == "turn-1"
    assert ritual["payload"]["state"] == 5 * 4 + 3
    assert ritual["lamport"] > 1


async def test_handler_sees_every_valid_event_exactly_once(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    seen: list[str] = []

    async def handler(event: Event, payload: Payload) -> None:
        seen.append(event.id)

    running_node.node.router.register("test", ["gift/txn"], handler)
    col: Collector = await collector_factory(running_node.port)
    sent = [f"gift-{i}" for i in range(150)]
    for i, eid in enumerate(sent):
        body = raw_event(
            nid, "gift/txn", {"giver": "a", "receiver": "b", "amount": i + 1}, event_id=eid
        )
        await col.publish(topic(nid, "gift/txn"), body)
        if i % 10 == 0:  # a QoS 1 resend of the same event: must not be handled twice
            await col.publish(topic(nid, "gift/txn"), body)
        if i % 25 == 0:  # interleaved garbage must not disturb anything
            await col.publish(topic(nid, "gift/txn"), b"{not json")
    # A last marker on the same connection: QoS 1 from one client keeps order through the
    # broker, so once it is handled every event before it has been dispatched.
    marker = raw_event(
        nid, "gift/txn", {"giver": "a", "receiver": "b", "amount": 1}, event_id="end"
    )
    await col.publish(topic(nid, "gift/txn"), marker)

    async def until_marker() -> None:
        while "end" not in seen:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(until_marker(), 10)
    await running_node.node.router.drain()
    assert seen == [*sent, "end"]
    assert running_node.node.router.stats.duplicates == 15
    assert running_node.node.router.stats.rejected["malformed_json"] == 6


BAD_INPUTS = {
    "malformed_json": ("glyph/rotated", b'{"id": "x", "node": '),
    "bad_payload": (
        "glyph/rotated",
        raw_event("{nid}", "glyph/rotated", {"symbol": 99, "rotation": 7}),
    ),
    "too_large": ("glyph/rotated", b"x" * (1024 * 1024)),
    "unknown_kind": (
        "dance/party",
        raw_event("{nid}", "glyph/rotated", {"symbol": 1, "rotation": 0}),
    ),
    "bad_envelope": ("glyph/rotated", json.dumps({"id": "x", "payload": {}}).encode()),
}


@pytest.mark.parametrize("reason", list(BAD_INPUTS))
async def test_bad_input_is_rejected_with_a_reason(
    running_node: RunningNode, collector_factory: CollectorFactory, reason: str
) -> None:
    nid = running_node.node_id
    kind, body = BAD_INPUTS[reason]
    body = body.replace(b"{nid}", nid.encode())
    col: Collector = await collector_factory(
        running_node.port, topic(nid, "safety/alert"), topic(nid, "ritual/performed")
    )
    await col.publish(topic(nid, kind), body)
    alerts = await col.wait_for(lambda c: c.of_kind("safety/alert"))
    assert alerts[0]["payload"]["reason"] == reason
    assert alerts[0]["payload"]["topic"] == topic(nid, kind)
    assert alerts[0]["payload"]["detail"]  # says what was wrong, in words
    assert running_node.node.router.stats.rejected[reason] == 1
    # ... and the node keeps going: the next good rotation still performs its ritual.
    await col.publish(
        topic(nid, "glyph/rotated"), raw_event(nid, "glyph/rotated", {"symbol": 0, "rotation": 1})
    )
    await col.wait_for(lambda c: c.of_kind("ritual/performed"))


async def test_a_turn_by_a_name_the_ledger_cannot_pay_is_refused_before_its_ritual(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester): a turn whose actor was "Ada Lovelace" ran its ritual, then its
    mint was refused by the ledger: the visitor got nothing, and nothing said why to the client.
    Must hold: the turn is refused `bad_envelope` naming the actor rule, no ritual runs, and the
    next turn by a valid name performs."""
    nid = running_node.node_id
    col: Collector = await collector_factory(
        running_node.port, topic(nid, "safety/alert"), topic(nid, "ritual/performed")
    )
    turn = {"symbol": 2, "rotation": 1}
    await col.publish(
        topic(nid, "glyph/rotated"), raw_event(nid, "glyph/rotated", turn, actor="Ada Lovelace")
    )
    alert = (await col.wait_for(lambda c: c.of_kind("safety/alert")))[0]["payload"]
    assert alert["reason"] == "bad_envelope"
    assert alert["detail"].startswith("actor: String should match pattern"), alert
    await col.publish(
        topic(nid, "glyph/rotated"), raw_event(nid, "glyph/rotated", turn, actor="ada-lovelace")
    )
    performed = await col.wait_for(lambda c: c.of_kind("ritual/performed"))
    assert [e["actor"] for e in performed] == ["ada-lovelace"]


async def test_a_long_cjk_prompt_fits_as_utf8_and_its_escaped_copy_is_told_why_not(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester): a 16,000-character CJK prompt (the schema allows 16,384)
    sent with json.dumps' defaults, every character a 6-byte \\u escape: 96 KB, refused
    `too_large` with only the sizes. Must hold: the same question in UTF-8 (48 KB) is taken in,
    and the escaped one's refusal says the escapes are why (README "Size")."""
    nid = running_node.node_id
    col: Collector = await collector_factory(running_node.port, topic(nid, "safety/alert"))
    prompt = "出口を数えるのは誰ですか" * 1333  # 15,996 characters
    envelope = {"id": "", "node": nid, "kind": "agent/request", "lamport": 1, "wall": 0.0}
    question = {**envelope, "actor": "visitor", "payload": {"persona": "x", "prompt": prompt}}
    escaped = json.dumps({**question, "id": "escaped"}).encode()
    utf8 = json.dumps({**question, "id": "utf8"}, ensure_ascii=False).encode()
    limit = running_node.node.config.node.max_payload
    assert len(utf8) < limit < len(escaped)
    await col.publish(topic(nid, "agent/request"), escaped)
    alert = (await col.wait_for(lambda c: c.of_kind("safety/alert")))[0]["payload"]
    assert alert["reason"] == "too_large"
    assert alert["detail"] == (
        f"{len(escaped)} bytes, the limit is {limit}; 15996 characters were written as \\u "
        "escapes: send them as UTF-8"
    )
    await col.publish(topic(nid, "agent/request"), utf8)
    accepted = running_node.node.router.stats.by_kind
    await until(lambda: accepted["agent/request"] == 1, 10, "the UTF-8 question taken in")


async def test_status_is_retained_and_discovery_announces_the_node(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    nid = running_node.node_id
    col: Collector = await collector_factory(
        running_node.port, topic(nid, "node/status"), f"homeassistant/device/gibsey_{nid}/config"
    )
    await col.wait_for(
        lambda c: {t.split("/")[0] for t, _ in c.messages} >= {"gibsey", "homeassistant"}
    )
    status = json.loads(next(p for t, p in col.messages if t.endswith("node/status")))
    assert status["state"] == "online"
    assert status["node"] == nid
    config = json.loads(next(p for t, p in col.messages if t.startswith("homeassistant/")))
    assert config["device"]["identifiers"] == [f"gibsey_{nid}"]
    components = config["components"]
    assert {"status", "events_per_s", "uptime"} <= set(components)
    for cfg in components.values():
        assert cfg["state_topic"] == topic(nid, "node/status")
        assert cfg["unique_id"].startswith(f"gibsey_{nid}_")
    eps = components["events_per_s"]
    assert eps["availability_topic"] == topic(nid, "node/status")
    assert eps["payload_not_available"] == "offline"


async def test_own_events_come_back_once_and_forgeries_are_still_checked(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    node = running_node.node
    nid = running_node.node_id
    seen: list[tuple[str, int]] = []

    async def handler(event: Event, payload: Payload) -> None:
        seen.append((event.id, event.payload["amount"]))

    node.router.register("test", ["gift/txn"], handler)
    col: Collector = await collector_factory(running_node.port, topic(nid, "safety/alert"))
    from gibsey.core.envelope import GiftTxn

    ours, acked = node.send("gift/txn", GiftTxn(giver="a", receiver="b", amount=5))
    await acked
    # Someone else publishes an invalid message carrying our event's id on our topic.
    forged = raw_event(
        nid, "gift/txn", {"giver": "a", "receiver": "b", "amount": -1}, event_id=ours.id
    )
    await col.publish(topic(nid, "gift/txn"), forged)
    alerts = await col.wait_for(lambda c: c.of_kind("safety/alert"))
    assert alerts[0]["payload"]["reason"] == "bad_payload"
    await node.router.drain()
    assert seen == [(ours.id, 5)]


async def test_no_writer_is_left_on_the_broker_socket_once_all_is_sent(
    running_node: RunningNode,
) -> None:
    # A writer left on an always-writable socket spins the event loop at 100% CPU while idle
    # (it happened with aiomqtt's late writer). The order that caught it: publish, the socket
    # turns writable and is drained before the scheduled write, publish again.
    spine = running_node.node.spine
    assert spine is not None and spine._conn is not None
    client = spine._conn.client
    sock = client.socket()
    assert sock is not None
    fd = sock.fileno()
    loop = asyncio.get_running_loop()
    first = spine.publish("test/writer", b"1")
    client.loop_write()  # what a writer does when the socket turns writable
    second = spine.publish("test/writer", b"2")
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    for _ in range(5):  # let every late callback run
        await asyncio.sleep(0)
    key = loop._selector.get_map().get(fd)  # type: ignore[attr-defined]
    assert key is None or not key.events & selectors.EVENT_WRITE, "writer left on the socket"


async def test_an_idle_node_leaves_the_cpu_alone(running_node: RunningNode) -> None:
    # Connected and idle, the spine wakes once a second for paho's keepalive and otherwise
    # sleeps: a busy loop would use a full second of CPU here.
    spine = running_node.node.spine
    assert spine is not None
    await spine.flush(timeout_s=5)
    await asyncio.sleep(0.2)  # the start's announcements and discovery settle
    cpu_s = time.process_time()
    await asyncio.sleep(1.0)
    assert time.process_time() - cpu_s < 0.25


async def _gifts_handled_once(node: Node, n: int) -> list[int]:
    """Send `n` gifts from the node itself and wait for every broker acknowledgement; the
    amounts its gift/txn handler was given, in order."""
    seen: list[int] = []

    async def handler(event: Event, payload: Payload) -> None:
        seen.append(event.payload["amount"])

    node.router.register("test", ["gift/txn"], handler)
    sends = [
        node.send("gift/txn", GiftTxn(giver="a", receiver="b", amount=i + 1)) for i in range(n)
    ]
    await asyncio.wait_for(asyncio.gather(*(acked for _out, acked in sends)), 10)
    await node.router.drain()
    return seen


async def test_the_broker_never_sends_the_node_its_own_events(tmp_path: Path) -> None:
    """MQTT 5's no local: what the node published is handled when sent and never comes back,
    so an echo costs the node nothing (it cost more CPU than the event itself). A visitor's
    event on the same topics still arrives."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        node = Node(tmp_path / "data", GibseyConfig())
        async with started(node, broker.url) as spine:
            assert not spine.echoes_own
            received = spine.stats.received
            assert await _gifts_handled_once(node, 50) == list(range(1, 51))
            # Published after every gift was acknowledged, so the broker queued any echo of
            # them to the node before this: once it is handled, no echo is on its way.
            async with aiomqtt.Client("127.0.0.1", broker.port) as visitor:
                marker = raw_event(node.node_id, "glyph/rotated", {"symbol": 1, "rotation": 0})
                await visitor.publish(topic(node.node_id, "glyph/rotated"), marker, qos=1)
            await until(lambda: spine.stats.received > received, 10, "the marker received")
            await node.router.drain()
            assert spine.stats.received - received == 1
            assert node.router.stats.echoes == 0
    finally:
        broker.stop()


async def test_a_broker_speaking_only_mqtt_3_1_1_is_spoken_to_in_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses MQTT 5 (amqtt here, named as an outside broker so the node has
    to find out) gets MQTT 3.1.1: the node connects, its own events come back, each is dropped
    unread, and every handler still sees each event once. Its first connection is a new
    session, as said: amqtt claims to resume one, and the node had said "session resumed: what
    the broker queued for us comes now" on a brand-new node (an outside audit)."""
    caplog.set_level(logging.INFO, logger="gibsey.spine")
    amqtt = embedded_broker("amqtt", "127.0.0.1", free_port(), tmp_path / "amqtt")
    await amqtt.start()
    try:
        node = Node(tmp_path / "data", GibseyConfig())
        async with started(node, amqtt.url) as spine:
            assert spine.echoes_own
            said = [r.getMessage() for r in caplog.records]
            said = [line for line in said if "connected to broker" in line]
            assert said == [f"connected to broker {amqtt.url} (new session)"], said
            assert await _gifts_handled_once(node, 50) == list(range(1, 51))
            await until(lambda: node.router.stats.echoes >= 50, 10, "50 echoes dropped")
            await node.router.drain()
            assert node.router.stats.echoes == 50
            assert node.router.stats.by_kind["gift/txn"] == 50
            assert node.router.stats.duplicates == 0
    finally:
        await amqtt.stop()
