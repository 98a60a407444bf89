"""A node with its HTTP gateway on a free loopback port, against a real Mosquitto."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.gateway.config import GatewayConfig
from gibsey.node.gateway.part import Gateway
from tests.brokers import Mosquitto
from tests.conftest import started

TOKEN = "test-write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class GatewayNode:
    node: Node
    gateway: Gateway
    broker: Mosquitto
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.gateway.url


def gateway_config() -> GibseyConfig:
    """A node's configuration with its gateway on a free loopback port and the test token."""
    return GibseyConfig(gateway=GatewayConfig(listen="127.0.0.1:0", token=TOKEN))


@asynccontextmanager
async def running_gateway(tmp_path: Path, config: GibseyConfig) -> AsyncIterator[GatewayNode]:
    """A node of `config` on a real Mosquitto, its gateway ready, and an HTTP client for it."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    node = Node(tmp_path / "data", config)
    try:
        async with started(node, broker.url):
            gateway = node.parts.gateway
            assert gateway is not None
            await asyncio.wait_for(gateway.ready.wait(), 10)
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                yield GatewayNode(node, gateway, broker, http)
    finally:
        broker.stop()


@pytest.fixture
async def gateway_node(tmp_path: Path) -> AsyncIterator[GatewayNode]:
    async with running_gateway(tmp_path, gateway_config()) as gw:
        yield gw
