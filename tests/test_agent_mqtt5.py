"""Answers on an MQTT 5 response topic with the request's correlation data (the agents' side
connection, mqtt5.py), the reply topic in the payload otherwise, and a broker without MQTT 5."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.mqtt5 import ResponseLink, Route
from gibsey.node.agents.service import AgentService
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.spine.broker import AmqttBroker
from tests.agent_support import TEST_AGENT, agent_node, agents, ask
from tests.brokers import free_port
from tests.conftest import CollectorFactory, started
from tests.events import raw_event, topic

CORR = b"\x00\x01corr"


@dataclass
class Got:
    topic: str
    qos: int
    correlation: bytes | None
    raw: bytes

    @property
    def doc(self) -> dict[str, Any]:
        return dict(json.loads(self.raw))


@dataclass
class V5Client:
    """A paho MQTT 5 client recording what arrives, with its properties."""

    port: int
    subs: list[str]
    got: list[Got] = field(default_factory=list)

    async def __aenter__(self) -> V5Client:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        subscribed = asyncio.Event()
        c = self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t5-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )

        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
            c.subscribe([(s, 1) for s in self.subs])

        def on_subscribe(c: mqtt.Client, u: object, mid: int, codes: object, p: object) -> None:
            self._loop.call_soon_threadsafe(subscribed.set)

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            corr = getattr(msg.properties, "CorrelationData", None)
            got = Got(msg.topic, msg.qos, corr, bytes(msg.payload))
            self._loop.call_soon_threadsafe(self._add, got)

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        await asyncio.wait_for(subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def _add(self, got: Got) -> None:
        self.got.append(got)
        self._changed.set()

    def publish(self, t: str, body: bytes, response_topic: str, correlation: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        self.client.publish(t, body, qos=1, properties=props)

    async def wait_for(self, predicate: Callable[[list[Got]], Any], timeout_s: float) -> Any:
        async def wait() -> Any:
            while not (result := predicate(self.got)):
                self._changed.clear()
                await self._changed.wait()
            return result

        return await asyncio.wait_for(wait(), timeout_s)


def emits(got: list[Got], t: str, corr: str) -> list[Got]:
    return [
        g
        for g in got
        if g.topic == t
        and g.doc.get("kind") == "agent/emit"
        and g.doc["payload"]["correlation"] == corr
    ]


def final_in(t: str, corr: str) -> Callable[[list[Got]], bool]:
    return lambda got: any(g.doc["payload"]["final"] for g in emits(got, t, corr))


async def linked(service: AgentService, timeout_s: float = 10.0) -> ResponseLink:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.link is not None and service.link.up:
            return service.link
        await asyncio.sleep(0.02)
    raise TimeoutError("the agents' MQTT 5 link did not come up")


def request(node: Node, persona: str, corr: str, **extra: Any) -> bytes:
    payload = {"persona": persona, "prompt": "What does the dial hear?", "correlation": corr}
    return raw_event(node.node_id, "agent/request", {**payload, **extra}, actor="mqtt5-test")


# -- with Mosquitto (MQTT 5) and the real model -------------------------------------------------


async def test_a_response_topic_gets_the_stream_with_the_correlation_data(tmp_path: Path) -> None:
    async with agent_node(tmp_path, preload=True) as (node, broker):
        await linked(agents(node))
        resp = f"gibsey/reply/{uuid.uuid4()}"
        resp2 = f"gibsey/reply/{uuid.uuid4()}"
        v3 = f"gibsey/reply/{uuid.uuid4()}"
        events = topic(node.node_id, "agent/emit")
        async with V5Client(broker.port, [resp, resp2, v3, events]) as client:
            req = topic(node.node_id, "agent/request")
            client.publish(req, request(node, "london-fox", "m5", max_tokens=16), resp, CORR)
            await client.wait_for(final_in(resp, "m5"), 60)
            await client.wait_for(final_in(events, "m5"), 10)
            got = emits(client.got, resp, "m5")
            tokens = [g for g in got if not g.doc["payload"]["final"]]
            finals = [g for g in got if g.doc["payload"]["final"]]
            assert tokens and len(finals) == 1
            assert {g.correlation for g in got} == {CORR}
            assert {g.qos for g in tokens} == {0} and finals[0].qos == 1
            assert [g.doc["payload"]["seq"] for g in tokens] == list(range(len(tokens)))
            assert finals[0].doc["payload"]["text"].strip()
            # The very bytes of the agent/emit events, one for one.
            assert [g.raw for g in got] == [g.raw for g in emits(client.got, events, "m5")]

            # Both a reply_to and a response topic: the response topic only (MQTT 5 wins).
            client.publish(req, request(node, "nobody", "both", reply_to=v3), resp2, b"2")
            await client.wait_for(final_in(resp2, "both"), 10)
            await client.wait_for(final_in(events, "both"), 10)
            await asyncio.sleep(0.3)
            assert [g.correlation for g in emits(client.got, resp2, "both")] == [b"2"]
            assert not [g for g in client.got if g.topic == v3]


async def test_a_bad_response_topic_is_refused_with_an_alert(tmp_path: Path) -> None:
    async with agent_node(tmp_path) as (node, broker):
        link = await linked(agents(node))
        inside = topic(node.node_id, "glyph/rotated")
        events = topic(node.node_id, "agent/emit")
        alerts = topic(node.node_id, "safety/alert")
        async with V5Client(broker.port, ["gibsey/reply/#", inside, events, alerts]) as client:
            req = topic(node.node_id, "agent/request")
            for i, bad in enumerate(["gibsey/reply/+", "gibsey/reply/#", inside]):
                # An unknown persona is answered at once, through the same reply routing.
                client.publish(req, request(node, "nobody", f"bad{i}"), bad, CORR)
                await client.wait_for(final_in(events, f"bad{i}"), 10)
            await client.wait_for(
                lambda got: (
                    sum(
                        1
                        for g in got
                        if g.topic == alerts and g.doc["payload"]["reason"] == "bad_reply_topic"
                    )
                    >= 3
                ),
                10,
            )
            await asyncio.sleep(0.3)
            assert not [g for g in client.got if g.topic not in (events, alerts)]
            assert link.up  # a publish to a wildcard topic would have cost the connection


# -- a broker without MQTT 5 -------------------------------------------------------------------


@asynccontextmanager
async def amqtt_agent_node(tmp_path: Path) -> AsyncIterator[tuple[Node, int]]:
    """A node whose broker, given by URL, has no MQTT 5: amqtt (Mosquitto speaks it)."""
    broker = AmqttBroker("127.0.0.1", free_port())
    await broker.start()
    try:
        config = GibseyConfig(agent=AgentConfig.model_validate(TEST_AGENT))
        node = Node(tmp_path / "data", config)
        async with started(node, broker.url):
            yield node, broker.port
    finally:
        await broker.stop()


async def test_the_embedded_amqtt_broker_gets_no_mqtt5_link_and_logs_nothing_about_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: the default node on the amqtt fallback. Must hold: the node knows its own broker
    has no MQTT 5 and says so once; no connect is tried, so neither the node nor amqtt logs a
    warning about it (before: two warning lines a minute, forever)."""
    caplog.set_level(logging.INFO)
    config = GibseyConfig(agent=AgentConfig.model_validate(TEST_AGENT))
    config.node.embedded_port = free_port()
    config.node.embedded_broker = "amqtt"
    node = Node(tmp_path / "data", config)
    async with started(node, None):
        deadline = time.monotonic() + 30
        while not any("MQTT 5 link off" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the agents never said the MQTT 5 link is off"
            await asyncio.sleep(0.02)
        assert agents(node).link is None
    said = [r.getMessage() for r in caplog.records]
    assert sum("MQTT 5 link off" in m for m in said) == 1
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and "MQTT" in r.getMessage()
    ]
    assert not [m for m in said if "Invalid connection" in m or "Invalid protocol" in m]


async def test_without_mqtt5_the_link_stays_off_and_reply_to_is_answered_at_once(
    tmp_path: Path, collector_factory: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gibsey.agents")
    async with amqtt_agent_node(tmp_path) as (node, port):
        service = agents(node)
        deadline = time.monotonic() + 10
        while not (service.link is not None and service.link.unsupported):
            assert time.monotonic() < deadline, "the MQTT 5 refusal was not noticed"
            await asyncio.sleep(0.02)
        link = service.link
        assert not link.up
        start = time.monotonic()
        final, _tokens, _secs = await ask(collector_factory, node, port, "nobody", "hello?")
        assert "no persona" in final["text"]
        assert time.monotonic() - start < 0.5  # no wait for an MQTT 5 copy that cannot come
        final, tokens, _secs = await ask(
            collector_factory, node, port, "london-fox", "What is the dial?", max_tokens=8
        )
        assert tokens and final["text"].strip()
        lines = [r for r in caplog.records if "MQTT 5 not supported by the broker" in r.message]
        assert len(lines) == 1 and "answering on reply_to only" in lines[0].message
    assert service.link is None


# -- the copies' table ---------------------------------------------------------------------------


async def test_route_waits_only_while_up_and_keeps_a_bounded_table() -> None:
    link = ResponseLink("mqtt://127.0.0.1:1", "unused", "gibsey/v1/n/agent/request", keep=3)
    r = Route("gibsey/reply/x", b"c")
    link._arrived("a", r)
    start = time.monotonic()
    assert await link.route("a", 1.0) == r  # there already (even with the link down)
    assert await link.route("a", 1.0) is None  # taken once
    assert await link.route("b", 1.0) is None  # down: no wait at all
    assert time.monotonic() - start < 0.1
    link._set_up(True)
    asyncio.get_running_loop().call_later(0.05, link._arrived, "c", r)
    assert await link.route("c", 1.0) == r  # awaited while up
    start = time.monotonic()
    assert await link.route("d", 0.1) is None  # never arrives: bounded
    assert 0.09 < time.monotonic() - start < 0.5
    asyncio.get_running_loop().call_later(0.05, link._set_up, False)
    start = time.monotonic()
    assert await link.route("e", 5.0) is None  # the link dropped: stop waiting at once
    assert time.monotonic() - start < 0.5
    for i in range(5):
        link._arrived(f"k{i}", r)
    assert [await link.route(f"k{i}", 0) for i in range(5)] == [None, None, r, r, r]
