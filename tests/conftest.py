from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.spine.broker import store_folders
from gibsey.node.spine.spine import Spine
from tests.brokers import Mosquitto, free_port
from tests.hang_report import start_timer


@pytest.fixture(autouse=True)
def report_a_hang(request: pytest.FixtureRequest) -> Iterator[None]:
    """Where an async test waits, printed a little before pytest-timeout ends it."""
    timer = start_timer(request.node)
    yield
    if timer is not None:
        timer.cancel()


@pytest.fixture(scope="session", autouse=True)
def free_the_broker_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The embedded Mosquitto keeps its store in RAM, one folder per data directory, freed by a
    node a day after its data directory is gone (node/spine/broker.py): the suite's nodes' are
    freed as it ends, not left in the machine's RAM for a day."""
    yield
    base = tmp_path_factory.getbasetemp().resolve()
    for folder, data_dir in store_folders():
        if data_dir.is_relative_to(base):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@asynccontextmanager
async def started(node: Node, broker_url: str | None) -> AsyncIterator[Spine]:
    """`node` started on `broker_url` (None: its own embedded broker), until its spine is
    connected; the spine, and the node stopped on the way out."""
    await node.start(broker_url)
    try:
        assert node.spine is not None
        await node.spine.wait_connected(timeout_s=10)
        yield node.spine
    finally:
        await node.stop()


@dataclass
class RunningNode:
    node: Node
    url: str
    port: int

    @property
    def node_id(self) -> str:
        return self.node.node_id


@pytest.fixture(params=["mosquitto", "embedded"])
async def running_node(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RunningNode]:
    """A node started in-process, against a real Mosquitto or its own embedded amqtt broker."""
    config = GibseyConfig()
    broker: Mosquitto | None = None
    if request.param == "mosquitto":
        broker = Mosquitto(tmp_path / "mosquitto").start()
        url: str | None = broker.url
        port = broker.port
    else:
        port = free_port()
        config.node.embedded_port = port
        config.node.embedded_broker = "amqtt"  # the fallback ("auto" is Mosquitto, tested above)
        url = None
    node = Node(tmp_path / "data", config)
    async with started(node, url) as spine:
        yield RunningNode(node, spine.url, port)
    if broker is not None:
        broker.stop()


@dataclass
class Collector:
    """A test MQTT client that records what arrives on its subscriptions."""

    client: aiomqtt.Client
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if t.endswith("/" + kind)]

    async def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> Any:
        async def _wait() -> Any:
            while True:
                result = predicate(self)
                if result:
                    return result
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(_wait(), timeout_s)

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> None:
        await self.client.publish(topic, payload, qos=qos, retain=retain)


async def _pump(col: Collector) -> None:
    async for msg in col.client.messages:
        payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
        col.messages.append((msg.topic.value, bytes(payload)))
        col._changed.set()


CollectorFactory = Callable[..., Awaitable[Collector]]


@pytest.fixture
async def collector_factory() -> AsyncIterator[CollectorFactory]:
    stack: list[tuple[aiomqtt.Client, asyncio.Task[None]]] = []

    async def make(port: int, *topics: str) -> Collector:
        client = aiomqtt.Client("127.0.0.1", port)
        await client.__aenter__()
        for topic in topics:
            await client.subscribe(topic, qos=1)
        col = Collector(client)
        task = asyncio.create_task(_pump(col))
        stack.append((client, task))
        return col

    yield make
    for client, task in reversed(stack):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            pass
