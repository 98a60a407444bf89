"""What the node drops is never silent (issue 16, item 5): each drop is counted in the retained
`node/status` and in /metrics, and said in one `safety/alert` per reason per interval with the
count; a full outbox says what really filled it (a flood with the broker up is not "the broker was
away"), and nothing is logged once per dropped message."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any

import pytest

from gibsey.core.envelope import Event, GiftTxn, GlyphRotated, Payload
from gibsey.node.spine.drops import DropAlerts, Due
from gibsey.node.spine.spine import OutboxFull
from tests.conftest import Collector, CollectorFactory
from tests.events import topic
from tests.gateway_support import GatewayNode, gateway_node

__all__ = ["gateway_node"]

FLOOD = 20_000  # messages handed to the spine in one go: twice what its outbox holds


def test_drop_alerts_say_each_reason_once_per_interval_with_the_count() -> None:
    alerts = DropAlerts(10.0, now=100.0)
    assert alerts.due({"outbox_full": 0, "throttled": 0}, now=101.0) == []
    assert alerts.due({"outbox_full": 5, "throttled": 0}, now=102.0) == [
        Due("outbox_full", 5, 5, 2.0)
    ]
    # More drops within the interval: nothing yet, for that reason; another reason is its own.
    assert alerts.due({"outbox_full": 900, "throttled": 3}, now=105.0) == [
        Due("throttled", 3, 3, 5.0)
    ]
    assert alerts.due({"outbox_full": 1000, "throttled": 3}, now=112.0) == [
        Due("outbox_full", 995, 1000, 10.0)
    ]
    assert alerts.due({"outbox_full": 1000, "throttled": 3}, now=200.0) == []  # none since


async def _alert(alerts: Collector, reason: str) -> dict[str, Any]:
    def found(col: Collector) -> dict[str, Any] | None:
        return next(
            (a for a in col.of_kind("safety/alert") if a["payload"]["reason"] == reason), None
        )

    # A deadline, not a speed: the alert leaves through the same outbox, behind the flood's
    # 10,000 kept messages, which a loaded machine's broker takes its time to acknowledge.
    doc: dict[str, Any] = await alerts.wait_for(found, timeout_s=90)
    return doc


async def _metric(gw: GatewayNode, reason: str) -> float:
    for line in (await gw.http.get("/metrics")).text.splitlines():
        if line.startswith(f'gibsey_dropped_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no gibsey_dropped_total for {reason}")


async def test_an_outbox_flooded_while_the_broker_is_up_is_counted_and_said_truthfully(
    gateway_node: GatewayNode,
    collector_factory: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twice the outbox's size handed to the spine at once, the broker up: the oldest are dropped
    and their futures say the broker acknowledges slower than the node sends (not that it was
    away); the count is in the status, /metrics and one outbox_full alert; no log line per drop
    (asyncio's "exception was never retrieved" for every dropped future, before)."""
    caplog.set_level(logging.WARNING)
    node = gateway_node.node
    spine = node.spine
    assert spine is not None
    alerts = await collector_factory(gateway_node.broker.port, topic(node.node_id, "safety/alert"))
    kept = None  # one early message (past the in-flight window, which went out at once)
    started = time.monotonic()
    for i in range(FLOOD):
        acked = spine.publish("gibsey/test/flood", str(i).encode())  # no one awaits these
        kept = acked if i == FLOOD // 4 else kept
    assert kept is not None
    dropped = spine.stats.outbox_dropped
    assert dropped > FLOOD // 3
    with pytest.raises(OutboxFull, match="the broker acknowledges slower") as failure:
        await kept
    assert "away" not in str(failure.value)
    assert node.status().outbox_dropped == dropped
    alert = await _alert(alerts, "outbox_full")
    # The node's own status and alerts queue behind the flood too, and each may push out one
    # more of the oldest: the alert counts what was dropped when it was said, from the flood's
    # drops up; once the outbox has drained, /metrics, the status and the spine agree exactly.
    said_count = int(alert["payload"]["detail"].split(" dropped in the last")[0])
    assert "slower" in alert["payload"]["detail"]
    await spine.flush(timeout_s=60)
    final = spine.stats.outbox_dropped
    assert dropped <= said_count <= final
    assert await _metric(gateway_node, "outbox_full") == final == node.status().outbox_dropped
    gc.collect()  # a dropped future nobody retrieved would be logged now
    said = [r.getMessage() for r in caplog.records]
    # (another test's client may leave an unretrieved future of its own for this collection)
    assert not [m for m in said if "OutboxFull" in m or "broker was away" in m]
    # One line per reason per interval (10 s), never one per drop (~10,000 before).
    intervals = 1 + int((time.monotonic() - started) // 10)
    assert 1 <= sum("outbox_full" in m for m in said) <= intervals


async def test_a_handler_behind_drops_are_counted_and_said_with_the_count(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """A part's handler that does not keep up: its queue (4) drops the oldest events; the node's
    status and /metrics count them, and one handler_overloaded alert names the handler and how
    many (before: an alert at the 1st and every 1000th drop, no count in the status)."""
    node = gateway_node.node
    alerts = await collector_factory(gateway_node.broker.port, topic(node.node_id, "safety/alert"))
    release = asyncio.Event()

    async def stuck(event: Event, payload: Payload) -> None:
        await release.wait()

    reg = node.router.register("stuck", ["gift/txn"], stuck, queue_size=4)
    await asyncio.sleep(0)  # its worker takes the first event and waits
    for i in range(20):
        node.send("gift/txn", GiftTxn(giver="a", receiver="b", amount=i + 1), handle_now=True)
    assert reg.dropped == node.router.stats.dropped == node.status().handler_dropped > 0
    alert = await _alert(alerts, "handler_overloaded")
    assert alert["payload"]["detail"].startswith(f"{reg.dropped} dropped in the last")
    assert f"stuck {reg.dropped}" in alert["payload"]["detail"]
    assert await _metric(gateway_node, "handler_overloaded") == reg.dropped
    release.set()


async def test_throttled_turns_are_counted_and_said(
    gateway_node: GatewayNode, collector_factory: CollectorFactory
) -> None:
    """One visitor turning 60 times at once, over the safety inverter's throttle: the refused
    turns are counted in the status and /metrics and said in one `throttled` alert."""
    node = gateway_node.node
    agents = node.parts.agents
    assert agents is not None
    alerts = await collector_factory(gateway_node.broker.port, topic(node.node_id, "safety/alert"))
    for i in range(60):
        node.send("glyph/rotated", GlyphRotated(symbol=i % 16, rotation=0), "v", handle_now=True)
    throttled = agents.rotations.throttled
    assert throttled > 0 and node.status().throttled == throttled
    alert = await _alert(alerts, "throttled")
    assert alert["payload"]["detail"].startswith(f"{throttled} dropped in the last")
    assert await _metric(gateway_node, "throttled") == throttled
    status = json.loads(node._status_bytes())
    assert status["throttled"] == throttled
