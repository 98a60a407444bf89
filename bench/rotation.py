"""The cost of one rotation inside the host, excluding MQTT.

From the raw bytes of a `glyph/rotated` message (as the broker hands them over) through the
router's validation, the opcode table, the verified Zig VM run, to every resulting event built
and serialised for the broker (4 events for a Dream: agent/request, narrative/change,
ritual/effect, ritual/performed). The node's one seam to the broker (publish_raw) is replaced
by a list append: the one narrow stand-in, because the network is what this figure leaves out.

The same rotations run a second time with tracing on (`[telemetry] otlp_endpoint`, core/trace.py):
each turn is a trace (the router's span, the VM's span, every event carrying the context) whose
spans the SDK batches and exports over OTLP/HTTP to a receiver in this process (`_OtlpSink`,
which takes each request and answers 200, as a collector does). The traced rows' baseline is
the untraced figure of the same run, so their ratio is what tracing costs a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gibsey.bench.nodeproc import open_rotation_throttle
from gibsey.bench.report import Row
from gibsey.node.config import load_gibsey_config
from gibsey.node.daemon import Node
from gibsey.node.glyph.vm import binding as vm

TURNS = 20_000
WARMUP = 2_000


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """Takes an OTLP/HTTP export and answers 200 with an empty ExportTraceServiceResponse."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per export would be the bench's only output


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """A local OTLP/HTTP receiver for the traced run; yields its traces URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


async def _measure(
    data: Path, n: int, otlp_endpoint: str = ""
) -> tuple[list[float], list[float], list[float], int]:
    # One bench actor turns 22,000 times: open the safety inverter's rotation throttle, or most
    # rituals would be refused before their program runs (and this would measure the refusal).
    open_rotation_throttle(data)
    if otlp_endpoint:  # the traced run: every turn a trace, its spans exported over OTLP
        with (data / "gibsey.toml").open("a") as toml:
            toml.write(f'[telemetry]\notlp_endpoint = "{otlp_endpoint}"\n')
    node = Node(data, load_gibsey_config(data))
    # Counted, not kept: a real spine lets go of each message once the broker has it, and a
    # list of every message would make this loop grow the heap (page faults) on every turn.
    sent = [0]
    # The stand-in for the broker acknowledges at once, with one shared finished future: the
    # figure leaves MQTT out, so the stand-in should cost (next to) nothing itself.
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    acked.set_result(None)

    def sink(kind: str, raw: bytes, qos: int = 1) -> asyncio.Future[None]:
        sent[0] += 1
        return acked

    node.publish_raw = sink  # type: ignore[method-assign]
    topic = f"gibsey/v1/{node.node_id}/glyph/rotated"
    messages = [
        json.dumps(
            {
                "id": f"r{i}",
                "node": node.node_id,
                "kind": "glyph/rotated",
                "lamport": i,
                "wall": 0.0,
                "actor": "bench",
                "payload": {"symbol": 1, "rotation": 3},
            }
        ).encode()
        for i in range(n + WARMUP)
    ]
    host_us: list[float] = []
    cpu_us: list[float] = []
    for i, raw in enumerate(messages):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        node.router.handle_message(topic, raw)
        elapsed = (time.perf_counter_ns() - t0) / 1e3
        cpu = (time.thread_time_ns() - c0) / 1e3
        if i >= WARMUP:
            host_us.append(elapsed)
            cpu_us.append(cpu)
    assert node.parts.glyph is not None
    binding = node.parts.glyph.bindings[1 * 4 + 3]
    trigger = vm.Trigger(symbol=1, rotation=3, actor=1000)
    machine = vm.Vm()
    bare_us: list[float] = []
    for i in range(n + WARMUP):
        t0 = time.perf_counter_ns()
        machine.run(binding.bytecode, trigger)
        elapsed = (time.perf_counter_ns() - t0) / 1e3
        if i >= WARMUP:
            bare_us.append(elapsed)
    machine.close()
    events_per_rotation = sent[0] // (n + WARMUP)
    runtime = node.parts.glyph
    assert runtime.failures == 0 and runtime.runs == n + WARMUP, "rituals were refused"
    for close in node._closers:
        close()
    return host_us, cpu_us, bare_us, events_per_rotation


def _traced(n: int) -> list[float]:
    """The rotations' wall times with tracing on, exported to a local OTLP receiver."""
    with otlp_sink() as url, tempfile.TemporaryDirectory(prefix="gibsey-bench-traced-") as tmp:
        host, _, _, _ = asyncio.run(_measure(Path(tmp), n, url))
    if not _OtlpSink.exports:
        raise RuntimeError("the traced rotations exported no span: tracing was not on")
    return host


def run(n: int = TURNS) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-rotation-") as tmp:
        host, cpu, bare, per = asyncio.run(_measure(Path(tmp), n))
    traced = _traced(n)
    note = f"event in -> verified run -> {per} events out; baseline: the bare VM call"
    return [
        Row(
            "rotation in the host, median",
            statistics.median(host),
            statistics.median(bare),
            "us",
            note=note,
        ),
        Row(
            "rotation in the host, p99",
            _percentile(host, 0.99),
            _percentile(bare, 0.99),
            "us",
            limit=("<=", 50.0),
        ),
        # CPU time of the same rotations: what the host spends, free of what other processes
        # on a busy machine do to the wall clock.
        Row("rotation CPU time, median", statistics.median(cpu), None, "us"),
        Row("rotation CPU time, p99", _percentile(cpu, 0.99), None, "us"),
        # What tracing costs: the same rotations traced (spans exported over OTLP), against
        # the untraced ones above (the ratio column); off, tracing makes no SDK object at all.
        Row(
            "rotation traced, median",
            statistics.median(traced),
            statistics.median(host),
            "us",
            note="tracing on (OTLP/HTTP export); baseline: tracing off, same run",
        ),
        Row("rotation traced, p99", _percentile(traced, 0.99), _percentile(host, 0.99), "us"),
    ]
