"""A node with its HTTP gateway on a free loopback port, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# JSON Schema's types as json.loads gives them (a bool is no integer, an integer is a number).
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def resolved(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or what its `$ref` names in the OpenAPI document `doc`."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].removeprefix("#/components/schemas/")]
    return schema


def schema_problems(
    value: Any, schema: dict[str, Any], doc: dict[str, Any], at: str = "$"
) -> list[str]:
    """Where `value` (a JSON answer) does not fit `schema` of the OpenAPI document `doc`: the
    JSON Schema the gateway's documents use (jsonschema is not a dependency), and stricter in
    one thing: an object's key that its schema does not name is a problem, unless the schema
    says `additionalProperties` (a client built from the document knows every key)."""
    schema = resolved(schema, doc)
    if "anyOf" in schema:
        if all(schema_problems(value, s, doc, at) for s in schema["anyOf"]):
            return [f"{at}: {value!r:.80} fits none of {schema['anyOf']}"]
        return []
    kind = schema.get("type")
    if kind is not None and not _JSON_TYPES[kind](value):
        return [f"{at}: {value!r:.80} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} is not one of {schema['enum']}"]
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return [f"{at}: {value!r:.80} does not match {schema['pattern']}"]
    if isinstance(value, list):
        items = schema.get("items", {})
        return [
            p for i, v in enumerate(value) for p in schema_problems(v, items, doc, f"{at}[{i}]")
        ]
    if isinstance(value, dict):
        return _object_problems(value, schema, doc, at)
    return []


def _object_problems(
    value: dict[str, Any], schema: dict[str, Any], doc: dict[str, Any], at: str
) -> list[str]:
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", False)
    problems = [f"{at}: no key {k!r}" for k in schema.get("required", []) if k not in value]
    for key, v in value.items():
        if key in props:
            problems += schema_problems(v, props[key], doc, f"{at}.{key}")
        elif isinstance(extra, dict):
            problems += schema_problems(v, extra, doc, f"{at}.{key}")
        elif extra is not True:
            problems.append(f"{at}: key {key!r} is not in the schema")
    return problems
