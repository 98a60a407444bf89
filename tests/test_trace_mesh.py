"""One trace per turn across the gallery: two real nodes (`gibsey up`, meshed, each with its
Mosquitto) export their spans over OTLP/HTTP to a receiver in this test (tests/otlp_support.py,
which decodes the protobuf requests with opentelemetry-proto)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gibsey.harness.gallery import Gallery, GalleryConfig
from gibsey.harness.nodeproc import NodeProc
from gibsey.harness.waiting import wait_until
from tests.gallery_support import started
from tests.otlp_support import OtlpReceiver, SeenSpan, otlp_receiver

START_TIMEOUT_S = 90.0
SPANS_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 180.0  # the persona's model loads on a shared 2-core machine
TURN_SPANS = ("dial frame", "router glyph/rotated", "vm run", "ledger append", "mesh send")


def _with_telemetry(g: Gallery, url: str) -> None:
    """Each node exports to the receiver and logs JSON lines (every field of a record)."""
    for node in g.nodes:
        with (node.data / "gibsey.toml").open("a") as toml:
            toml.write(f'\n[telemetry]\notlp_endpoint = "{url}"\nexport_delay_s = 0.2\n')
            toml.write('\n[log]\nformat = "json"\n')


def _trace_of(otlp: OtlpReceiver, service: str, name: str) -> list[SeenSpan]:
    return [s for s in otlp.spans() if s.service == service and s.name == name]


def _spans_of(otlp: OtlpReceiver, trace_id: str) -> dict[tuple[str, str], SeenSpan]:
    return {(s.service, s.name): s for s in otlp.spans() if s.trace_id == trace_id}


def _logged_with(node: NodeProc, trace_id: str, says: str) -> bool:
    for line in node.log_tail(200_000).splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("trace_id") == trace_id and says in record.get("msg", ""):
                return True
    return False


def _turn(g: Gallery, otlp: OtlpReceiver, rotation: int, have: Callable[[str], bool]) -> str:
    """One detent on the first node's dial; the trace id its dial frame began, once `have`."""
    first = g.nodes[0]
    before = {s.trace_id for s in _trace_of(otlp, first.node_id, "dial frame")}
    assert first.client is not None
    first.client.turn(0, rotation)
    found: list[str] = []

    def traced() -> bool:
        found[:] = [
            s.trace_id
            for s in _trace_of(otlp, first.node_id, "dial frame")
            if s.trace_id not in before
        ]
        return len(found) == 1 and have(found[0])

    wait_until(traced, SPANS_TIMEOUT_S if rotation != 3 else ANSWER_TIMEOUT_S, "the turn's spans")
    return found[0]


def test_one_turn_is_one_trace_across_two_nodes(tmp_path: Path) -> None:
    """Tried: one Read turn of the first node's dial (its program mints, so the entry is
    appended, pushed to the peer and imported there), then one Dream turn (its program asks a
    persona). Must hold: the Read turn's spans - dial frame, router, VM run, ledger append and
    mesh send on the first node, the import on the second - share one trace id, in one tree
    (the frame its root; the peer's import a child of the append); the peer's log record of
    the import carries that trace id (the journal's GIBSEY_TRACE_ID); the Dream turn's persona
    answer is a span of its own trace."""
    with otlp_receiver() as otlp:
        g = Gallery(tmp_path / "gallery", GalleryConfig(nodes=2))
        _with_telemetry(g, otlp.url)
        started(g)
        try:
            wait_until(g.meshed, START_TIMEOUT_S, "the two nodes to mesh", step_s=0.1)
            first, second = g.nodes
            ids = {first.node_id, second.node_id}

            def across(trace_id: str) -> bool:
                spans = _spans_of(otlp, trace_id)
                wanted = {(first.node_id, n) for n in TURN_SPANS}
                return wanted | {(second.node_id, "mesh import")} <= set(spans)

            read = _turn(g, otlp, 0, across)
            spans = _spans_of(otlp, read)
            assert {service for service, _ in spans} == ids
            frame, router, run, append, send = (spans[(first.node_id, n)] for n in TURN_SPANS)
            assert frame.parent_id == ""
            assert router.parent_id == frame.span_id
            # The VM's run and the ledger's append (of the run's MINT) are the router's children;
            # the mesh's send and the peer's import, the append's.
            assert run.parent_id == append.parent_id == router.span_id
            imported = spans[(second.node_id, "mesh import")]
            assert send.parent_id == imported.parent_id == append.span_id
            assert imported.attributes["gibsey.import"] == "appended"
            wait_until(
                lambda: _logged_with(second, read, "traced entries"),
                SPANS_TIMEOUT_S,
                "the peer's log record of the traced import",
            )

            dream = _turn(
                g, otlp, 3, lambda t: (first.node_id, "persona answer") in _spans_of(otlp, t)
            )
            assert dream != read
            answer = _spans_of(otlp, dream)[(first.node_id, "persona answer")]
            assert answer.attributes["gibsey.persona"] == "an-author"
        finally:
            g.stop()
