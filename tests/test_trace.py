"""Trace context in the envelope and beside the mesh's entries (core/trace.py), with tracing off
and on; the two-node trace over OTLP is tests/test_trace_mesh.py."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from gibsey.core import trace
from gibsey.core.envelope import GlyphRotated, Rejection, encode_event, json_schemas, parse_event
from gibsey.core.paced import PacedRecords
from gibsey.harness.ports import free_port
from gibsey.mesh import wire
from gibsey.node.gateway.journal import record_fields
from tests.conftest import CollectorFactory, RunningNode
from tests.events import raw_event, topic

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _rotated(trace_field: object = None) -> bytes:
    doc = json.loads(raw_event("n1", "glyph/rotated", {"symbol": 1, "rotation": 0}))
    if trace_field is not None:
        doc["trace"] = trace_field
    return json.dumps(doc).encode()


def test_an_event_without_trace_context_stays_as_it_was() -> None:
    """Tried: an event sent outside any traced turn, and an old client's event (no `trace`).
    Must hold: neither has a `trace` key on the wire; both validate, with trace None."""
    out = encode_event("n1", "glyph/rotated", GlyphRotated(symbol=1, rotation=0), 3)
    assert b'"trace"' not in out.raw and b'"trace"' not in out.event.to_bytes()
    event, _ = parse_event(topic("n1", "glyph/rotated"), out.raw, 65536)
    assert event.trace is None
    old, _ = parse_event(topic("n1", "glyph/rotated"), _rotated(), 65536)
    assert old.trace is None and b'"trace"' not in old.to_bytes()


def test_an_event_sent_in_a_traced_turn_carries_its_context() -> None:
    """Tried: encode an event while a turn with a traceparent is handled (`trace.within`).
    Must hold: the wire bytes carry it, they validate to exactly the event the node keeps,
    and outside the turn the next event carries nothing."""
    with trace.within(TP):
        out = encode_event("n1", "glyph/rotated", GlyphRotated(symbol=1, rotation=0), 3)
    assert out.trace == TP
    event, _ = parse_event(topic("n1", "glyph/rotated"), out.raw, 65536)
    assert event == out.event and event.trace == TP
    assert json.loads(out.event.to_bytes()) == json.loads(out.raw)
    after = encode_event("n1", "glyph/rotated", GlyphRotated(symbol=1, rotation=0), 4)
    assert after.trace is None


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # W3C: lower case only
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a version we do not know
        7,
    ],
)
def test_malformed_trace_context_is_refused_with_its_reason(bad: object) -> None:
    """Tried: a glyph/rotated whose `trace` is no W3C traceparent. Must hold: refused at the
    boundary as a bad envelope naming the field (never dispatched half-believed)."""
    with pytest.raises(Rejection) as caught:
        parse_event(topic("n1", "glyph/rotated"), _rotated(bad), 65536)
    assert caught.value.reason == "bad_envelope" and "trace" in caught.value.detail


def test_the_schema_describes_the_optional_trace() -> None:
    """Must hold: `gibsey schema` shows `trace` in every envelope, and no envelope needs it."""
    for kind, doc in json_schemas()["kinds"].items():
        if kind == "node/status":
            continue
        assert "trace" in doc["properties"], kind
        assert "trace" not in doc.get("required", []), kind


def test_trace_context_travels_beside_the_mesh_entries() -> None:
    """Tried: a T message's traces frame, and frames that are no such thing. Must hold: a
    round trip gives the same map; an index past the entries, a bad traceparent, a repeated
    index or a T message without entries is a WireError (a strike against the sender)."""
    frame = wire.encode_traces({0: TP, 2: TP})
    assert wire.decode_traces(frame, 3) == {0: TP, 2: TP}
    assert wire.check([wire.TRACED, frame, b"e0", b"e1", b"e2"]) == wire.TRACED
    bad_frames = [
        wire.encode_traces({3: TP}),
        frame[:-1],
        wire.encode_traces({0: TP}).replace(b"4bf9", b"XXXX"),
        wire.encode_traces({0: TP}) * 2,
    ]
    for bad in bad_frames:
        with pytest.raises(wire.WireError):
            wire.decode_traces(bad, 3)
    with pytest.raises(wire.WireError):
        wire.check([wire.TRACED, frame])


def test_log_records_of_a_traced_turn_carry_the_trace_id() -> None:
    """Tried: a record logged while a traced turn is handled, one after. Must hold: the first
    has `trace_id` (the journal's GIBSEY_TRACE_ID field), the second none."""
    trace.install_log_records()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger("gibsey.test-trace")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with trace.within(TP):
            logger.info("in the turn")
        logger.info("after it")
    finally:
        logger.removeHandler(handler)
    assert ("GIBSEY_TRACE_ID", TRACE_ID) in record_fields(records[0], "in the turn")
    assert not any(k == "GIBSEY_TRACE_ID" for k, _ in record_fields(records[1], "after it"))


OFF_SCRIPT = """
import asyncio, sys, tempfile
from pathlib import Path
from gibsey.bench import rotation
from gibsey.core import trace
with tempfile.TemporaryDirectory() as tmp:
    asyncio.run(rotation._measure(Path(tmp), 100))
assert not trace.enabled()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_tracing_off_makes_no_sdk_object() -> None:
    """Tried: 2,100 rotations through a real node's router, runtime and VM without
    `[telemetry]` (the bench's loop, in a fresh interpreter). Must hold: tracing is off and
    not one OpenTelemetry module was even imported."""
    done = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


async def test_a_clients_traced_turn_is_continued_with_tracing_off(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried: a client's glyph/rotated (Read: the program mints) carrying a traceparent, to a
    node without [telemetry]; then one without. Must hold: every event the first turn caused -
    the ritual, its effect, the mint's gift/txn - carries the client's trace id; the second
    turn's events carry no `trace` at all."""
    nid = running_node.node_id
    kinds = ("ritual/performed", "ritual/effect", "gift/txn")
    col = await collector_factory(running_node.port, *(topic(nid, k) for k in kinds))
    doc = json.loads(raw_event(nid, "glyph/rotated", {"symbol": 1, "rotation": 0}, event_id="t1"))
    doc["trace"] = TP
    await col.publish(topic(nid, "glyph/rotated"), json.dumps(doc).encode())

    def caused(c: Any) -> list[dict[str, Any]] | None:
        found = [e for e in c.of_kind("gift/txn") if e["actor"] == doc["actor"]]
        return [*c.of_kind("ritual/performed"), *c.of_kind("ritual/effect"), *found] or None

    await col.wait_for(lambda c: len(caused(c) or []) >= 3 or None)
    events = caused(col) or []
    assert {e["kind"] for e in events} == set(kinds)
    assert all(e["trace"][3:35] == TRACE_ID for e in events), events
    plain = json.loads(raw_event(nid, "glyph/rotated", {"symbol": 2, "rotation": 0}, event_id="t2"))
    await col.publish(topic(nid, "glyph/rotated"), json.dumps(plain).encode())
    ritual = await col.wait_for(
        lambda c: next(
            (e for e in c.of_kind("ritual/performed") if e["payload"]["cause"] == "t2"), None
        )
    )
    assert "trace" not in ritual


# A process tracing to the collector on port argv[1], keeping every log line in `said`.
TRACING_PROCESS = """
import json, logging, sys, time
from gibsey.core import trace
said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.basicConfig(level=logging.INFO, handlers=[Keep()])
url = f"http://127.0.0.1:{sys.argv[1]}/v1/traces"
trace.configure(trace.TelemetryConfig(otlp_endpoint=url, export_delay_s=60), "n1")
"""
DEAD_COLLECTOR_SCRIPT = (
    TRACING_PROCESS
    + """
for _ in range(2):
    with trace.span("turn"):
        pass
    trace._provider.force_flush(20_000)
print(json.dumps(said))
"""
)


def test_a_collector_switched_off_costs_one_line_of_each_kind_a_minute() -> None:
    """Tried: `[telemetry] otlp_endpoint` naming a collector that is switched off (nothing
    listens), two turns' spans exported. OpenTelemetry's exporter logs each try ("Transient
    error ... retrying") and each failed batch: three lines every ~3 s while the collector
    stays off, ~86,000 a night on a card's journal. Must hold: each kind of line once."""
    done = subprocess.run(
        [sys.executable, "-c", DEAD_COLLECTOR_SCRIPT, str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert [line for line in said if "Transient error" in line][1:] == []
    assert len([line for line in said if "Failed to export" in line]) == 1, said


SILENT_COLLECTOR_SCRIPT = (
    TRACING_PROCESS
    + """
with trace.span("turn"):
    pass
t0 = time.monotonic()
trace.shutdown()
took = time.monotonic() - t0
print(json.dumps({"took": took, "on": trace.enabled(), "said": said, "ended_at": time.time()}))
"""
)


def test_a_silent_collector_holds_a_stop_for_its_budget_only() -> None:
    """Tried: a node stopping with a turn's span pending while its collector takes the
    connection and never answers (a hung collector; a port behind a firewall that drops).
    The SDK's flush waited out its exporter (5 s a request) and a stop took 3-5 s. Must
    hold: the stop waits STOP_FLUSH_S, says in one line that it left spans behind, tracing
    is off, and the process exits without waiting for the collector again."""
    with socket.socket() as silent:  # the kernel completes each connection; nobody reads
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        done = subprocess.run(
            [sys.executable, "-c", SILENT_COLLECTOR_SCRIPT, str(silent.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        exited_at = time.time()
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert trace.STOP_FLUSH_S <= out["took"] < trace.STOP_FLUSH_S + 1.5, out
    assert out["on"] is False
    left = [line for line in out["said"] if "did not reach the collector" in line]
    assert len(left) == 1 and f"within {trace.STOP_FLUSH_S:g} s" in left[0], out["said"]
    # The exporter's request, still waiting, would hold the exit 3 s more if the flush were
    # waited for there (an exit-time shutdown waits for the collector up to 30 s).
    assert exited_at - out["ended_at"] < 2.5, (exited_at, out)


def test_paced_records_say_what_they_held_back_once_the_interval_passed() -> None:
    """The first record of a kind passes, the same kind within the interval does not, and the
    next one after it says how many were held back; another kind is not held by the first."""
    now = [0.0]
    paced = PacedRecords(interval_s=60.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("otel", logging.WARNING, __file__, 1, msg, ("x",), None)

    assert paced.filter(record("Transient error %s"))
    now[0] = 30.0
    assert not paced.filter(record("Transient error %s"))
    assert not paced.filter(record("Transient error %s"))
    assert paced.filter(record("Failed to export %s"))
    now[0] = 61.0
    later = record("Transient error %s")
    assert paced.filter(later)
    assert later.getMessage() == "Transient error x (and 2 like it unlogged in the 61 s before)"
