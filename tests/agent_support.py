"""Shared helpers for the agent tests: a node with agents on a real Mosquitto, and asking."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.service import AgentService
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory, started
from tests.events import raw_event, topic

FAST_WATCHDOG = {"ping_interval": 0.5, "ping_timeout": 2.0, "max_tokens": 24}
# The tests' workers run at the daemon's priority, not the product's (nice 10, SCHED_BATCH, in
# an autogroup of their own: AGENTS.md "Priorities"): those yield the CPU to every other
# session, and on a busy machine (a laptop running `make test` beside other work, load 12 on
# 2 cores) a test's persona got no token in 60 s. What the product's priorities do is tested
# by tests/test_agent_priority.py, with `product_priorities=True`.
TEST_PRIORITIES = {"nice": 0, "sched": "other"}
TEST_AGENT = {**FAST_WATCHDOG, **TEST_PRIORITIES}  # the [agent] of a test's node


@asynccontextmanager
async def agent_node(
    tmp_path: Path, *, product_priorities: bool = False, **agent: Any
) -> AsyncIterator[tuple[Node, Mosquitto]]:
    broker = Mosquitto(tmp_path / "mosquitto").start()
    priorities = {} if product_priorities else TEST_PRIORITIES
    config = GibseyConfig(
        agent=AgentConfig.model_validate({**FAST_WATCHDOG, **priorities, **agent})
    )
    node = Node(tmp_path / "data", config)
    try:
        async with started(node, broker.url):
            yield node, broker
    finally:
        broker.stop()


def agents(node: Node) -> AgentService:
    service = node.parts.agents
    assert service is not None, "the agents part is not attached"
    return service


def _emits(col: Collector, corr: str, final: bool) -> list[dict[str, Any]]:
    """The agent/emit payloads `col` got for request `corr`: its final ones, or its tokens."""
    return [
        m["payload"]
        for m in (json.loads(p) for _t, p in col.messages)
        if m.get("kind") == "agent/emit"
        and m["payload"]["correlation"] == corr
        and bool(m["payload"]["final"]) is final
    ]


def finals(col: Collector, corr: str) -> list[dict[str, Any]]:
    return _emits(col, corr, final=True)


def tokens(col: Collector, corr: str) -> list[dict[str, Any]]:
    return _emits(col, corr, final=False)


async def ask(
    collector_factory: CollectorFactory,
    node: Node,
    port: int,
    persona: str,
    prompt: str,
    timeout_s: float = 60.0,
    max_tokens: int = 16,
    actor: str = "visitor",
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Ask over MQTT with a reply topic; (final payload, token payloads, seconds)."""
    reply = f"gibsey/reply/{uuid.uuid4().hex[:8]}"
    col = await collector_factory(port, reply)
    corr = uuid.uuid4().hex[:12]
    payload = {
        "persona": persona,
        "prompt": prompt,
        "reply_to": reply,
        "correlation": corr,
        "max_tokens": max_tokens,
    }
    start = time.monotonic()
    await col.publish(
        topic(node.node_id, "agent/request"),
        raw_event(node.node_id, "agent/request", payload, actor=actor),
    )
    done = await col.wait_for(lambda c: finals(c, corr), timeout_s=timeout_s)
    return done[0], tokens(col, corr), time.monotonic() - start
