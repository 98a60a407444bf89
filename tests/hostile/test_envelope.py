"""Impossible clocks in an envelope, and what a node shows about itself (issue 16, item 9).

What is tried: events whose `wall` is NaN, an infinity or no number at all (JSON's `NaN` literal
included, which the parser takes unless told not to); an event whose Lamport timestamp is
2**63-1, published through a real Mosquitto to a real `gibsey up`; a model configured by a
path that says more than it should.
What must hold: the bad walls are refused at the boundary with a reason and run no ritual; the
far-future Lamport is refused (`safety/alert` lamport_ahead: a timestamp more than
`core.lamport.MAX_AHEAD` ahead of the node's clock is not believed) and leaves the node's clock
where it was; every turn the node accepts gets a ritual whose Lamport is greater than its
cause's; the retained `agent/state/worker` names the model file, never its path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gibsey.core.envelope import Rejection, parse_event
from gibsey.core.lamport import MAX_AHEAD
from gibsey.harness.nodeproc import spawn_up, wait_for_file
from gibsey.harness.waiting import stop_process
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory

NODE = "n1"
TURN = b'{"symbol":1,"rotation":3}'
MODEL_PATH = "/srv/private/visitors/2026-11-29/gemma-3-270m-it-Q4_K_M.gguf"


def _turn(
    node: str, *, wall: bytes = b"0.0", lamport: bytes = b"1", event_id: str | None = None
) -> tuple[str, bytes]:
    """(id, raw) of a glyph/rotated envelope written byte by byte, as an outside client may."""
    event_id = event_id or uuid.uuid4().hex
    raw = (
        b'{"id":"%s","node":"%s","kind":"glyph/rotated","lamport":%s,"wall":%s,'
        b'"actor":"visitor","payload":%s}' % (event_id.encode(), node.encode(), lamport, wall, TURN)
    )
    return event_id, raw


# ---- at the boundary: the parser ----------------------------------------------------------------

BAD_WALLS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b'"nan"', b'"inf"', b"true", b"-1.0"]


@pytest.mark.parametrize("wall", BAD_WALLS, ids=lambda w: w.decode())
def test_a_wall_that_is_no_time_is_refused_by_the_parser(wall: bytes) -> None:
    """Tried: `wall` as NaN/Infinity literals, a number too large for a float, a string, a
    boolean, a time before 1970. Must hold: Rejection bad_envelope naming `wall`."""
    _, raw = _turn(NODE, wall=wall)
    with pytest.raises(Rejection) as caught:
        parse_event(f"gibsey/v1/{NODE}/glyph/rotated", raw, 64 * 1024)
    assert caught.value.reason == "bad_envelope" and caught.value.detail.startswith("wall")


@pytest.mark.parametrize("lamport", [b"true", b'"7"', b"7.0", b"-1", b"9223372036854775808"])
def test_a_lamport_that_is_no_counter_is_refused_by_the_parser(lamport: bytes) -> None:
    """Tried: a boolean, a string, a float, a negative and 2**63 as `lamport`. Must hold:
    Rejection bad_envelope naming `lamport` (a boolean is not read as 1)."""
    _, raw = _turn(NODE, lamport=lamport)
    with pytest.raises(Rejection) as caught:
        parse_event(f"gibsey/v1/{NODE}/glyph/rotated", raw, 64 * 1024)
    assert caught.value.reason == "bad_envelope" and caught.value.detail.startswith("lamport")


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1e999"], ids=lambda v: v.decode())
def test_a_payload_number_that_is_no_number_is_refused_by_the_parser(value: bytes) -> None:
    """Tried: a rebirth whose dead run lived NaN (or infinitely many) seconds. Must hold:
    Rejection bad_payload naming the field (a payload's floats are finite too)."""
    payload = b'{"uptime_s":%s,"cause":"exit 1","restarts":1,"window_minutes":10}' % value
    raw = (
        b'{"id":"x1","node":"n1","kind":"ritual/rebirth","lamport":1,"wall":0,"actor":"node",'
        b'"payload":%s}' % payload
    )
    with pytest.raises(Rejection) as caught:
        parse_event("gibsey/v1/n1/ritual/rebirth", raw, 64 * 1024)
    assert caught.value.reason == "bad_payload" and "uptime_s" in caught.value.detail


@pytest.mark.parametrize(
    "payload",
    [
        b'{"symbol":"3","rotation":0}',
        b'{"symbol":3,"rotation":true}',
        b'{"symbol":" 7 ","rotation":"0"}',
        b'{"symbol":3.0,"rotation":0}',
    ],
    ids=["a string", "a boolean", "padded strings", "a float"],
)
def test_a_payload_field_of_another_json_type_is_refused(payload: bytes) -> None:
    """Tried (an outside tester): a turn's symbol as "3", its rotation as true. They were
    performed (state 12, and 13: true read as Write), while `gibsey schema` says integer and
    the envelope refuses `"lamport": "1"`. Must hold: Rejection bad_payload naming the field."""
    raw = (
        b'{"id":"x1","node":"n1","kind":"glyph/rotated","lamport":1,"wall":0,"actor":"v1",'
        b'"payload":%s}' % payload
    )
    with pytest.raises(Rejection) as caught:
        parse_event("gibsey/v1/n1/glyph/rotated", raw, 64 * 1024)
    assert (
        caught.value.reason == "bad_payload" and "should be a valid integer" in caught.value.detail
    )


# ---- at a real node -----------------------------------------------------------------------------


@dataclass
class UpNode:
    broker: Mosquitto
    data: Path
    proc: subprocess.Popen[bytes]
    node_id: str
    url: str

    def rejected(self) -> dict[str, int]:
        """The router's rejections by reason, from the node's HTTP API."""
        status = httpx.get(f"{self.url}/api/status", timeout=10).json()
        return dict(status["router"]["rejected"])

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT, timeout_s=30)


@pytest.fixture
def up_node(tmp_path: Path) -> Iterator[UpNode]:
    """`gibsey up` on a real Mosquitto, no dial (its alerts would share the alert budget), the
    agents configured with a model path that must not be shown."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text(f'[dial]\nenabled = false\n[agent]\nmodel = "{MODEL_PATH}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIBSEY_")}
    proc = spawn_up(data, broker.url, "127.0.0.1:0", env=env, log=tmp_path / "up.log")
    try:
        wait_for_file(proc, data / "gateway.json", 60, "gibsey up")
        url = json.loads((data / "gateway.json").read_text())["url"]
        yield UpNode(broker, data, proc, (data / "node_id").read_text().strip(), url)
    finally:
        stop_process(proc, signal.SIGINT, timeout_s=30)
        broker.stop()


async def _watch(up: UpNode, collector_factory: CollectorFactory) -> Collector:
    """A client on the node's topics, once the node is subscribed (its retained status says
    online only after its subscriptions are acknowledged)."""
    col = await collector_factory(up.broker.port, f"gibsey/v1/{up.node_id}/#")

    def online(c: Collector) -> bool:
        return any(json.loads(p).get("state") == "online" for t, p in c.messages if "status" in t)

    await col.wait_for(online, timeout_s=30)
    return col


def _events(col: Collector, kind: str) -> list[dict[str, Any]]:
    return [m for m in col.of_kind(kind) if "payload" in m]


def _ritual_for(col: Collector, cause: str) -> dict[str, Any] | None:
    found = [m for m in _events(col, "ritual/performed") if m["payload"]["cause"] == cause]
    return found[0] if found else None


async def test_a_node_refuses_walls_that_are_no_time(
    up_node: UpNode, collector_factory: CollectorFactory
) -> None:
    """Tried: turns whose wall is NaN, Infinity, -Infinity and 1e999, published to the node's
    broker, then a good turn. Must hold: each refused as bad_envelope (counted), none performs
    a ritual, the good turn does."""
    col = await _watch(up_node, collector_factory)
    topic = f"gibsey/v1/{up_node.node_id}/glyph/rotated"
    bad = []
    for wall in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        event_id, raw = _turn(up_node.node_id, wall=wall)
        bad.append(event_id)
        await col.publish(topic, raw)
    good, raw = _turn(up_node.node_id)
    await col.publish(topic, raw)
    # One publisher, QoS 1, one broker: the node handles the good turn after the bad ones.
    await col.wait_for(lambda c: _ritual_for(c, good))
    assert all(_ritual_for(col, event_id) is None for event_id in bad)
    assert up_node.rejected().get("bad_envelope") == len(bad)
    alerts = [m["payload"] for m in _events(col, "safety/alert")]
    assert any(a["reason"] == "bad_envelope" and "wall" in a["detail"] for a in alerts)


async def test_a_far_future_lamport_is_refused_and_replies_follow_their_cause(
    up_node: UpNode, collector_factory: CollectorFactory
) -> None:
    """Tried: a turn stamped Lamport 2**63-1, then one stamped just within the bound (the
    node's clock + MAX_AHEAD/10), then a plain one stamped 1. Must hold: the first is refused
    (`safety/alert` lamport_ahead, counted) and runs no ritual; the node's clock stays far
    from the end of its range (also as stored in its data directory after it stops); each
    accepted turn gets a ritual whose Lamport is greater than the turn's."""
    col = await _watch(up_node, collector_factory)
    topic = f"gibsey/v1/{up_node.node_id}/glyph/rotated"
    far, raw = _turn(up_node.node_id, lamport=str(2**63 - 1).encode())
    await col.publish(topic, raw)

    def refused(c: Collector) -> dict[str, Any] | None:
        found = [m for m in _events(c, "safety/alert") if m["payload"]["reason"] == "lamport_ahead"]
        return found[0] if found else None

    alert = await col.wait_for(refused)
    clock = int(alert["lamport"])  # the node's clock just after it refused the turn
    assert clock < 2**40
    within = clock + MAX_AHEAD // 10
    near, raw_near = _turn(up_node.node_id, lamport=str(within).encode())
    plain, raw_plain = _turn(up_node.node_id, lamport=b"1")
    await col.publish(topic, raw_near)
    await col.publish(topic, raw_plain)
    ritual_near = await col.wait_for(lambda c: _ritual_for(c, near))
    ritual_plain = await col.wait_for(lambda c: _ritual_for(c, plain))
    assert ritual_near["lamport"] > within
    assert ritual_plain["lamport"] > ritual_near["lamport"]
    assert _ritual_for(col, far) is None
    assert up_node.rejected().get("lamport_ahead") == 1
    up_node.stop()
    stored = int((up_node.data / "lamport").read_text())
    assert stored < within + 2 * MAX_AHEAD


async def test_the_worker_state_names_the_model_not_its_path(
    up_node: UpNode, collector_factory: CollectorFactory
) -> None:
    """Tried: `[agent] model` set to a path under a private folder; a client reads the retained
    `agent/state/worker`. Must hold: it names the model file only, no folder of the node."""
    col = await collector_factory(
        up_node.broker.port, f"gibsey/v1/{up_node.node_id}/agent/state/worker"
    )
    await col.wait_for(lambda c: c.messages)
    state = json.loads(col.messages[-1][1])
    assert state["model"] == Path(MODEL_PATH).name
    assert "/srv" not in json.dumps(state)
