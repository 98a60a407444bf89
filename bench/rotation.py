"""The cost of one rotation inside the host, excluding MQTT.

From the raw bytes of a `glyph/rotated` message (as the broker hands them over) through the
router's validation, the opcode table, the verified Zig VM run, to every resulting event built
and serialised for the broker (4 events for a Dream: agent/request, narrative/change,
ritual/effect, ritual/performed). The node's one seam to the broker (publish_raw) is replaced
by a list append: the one narrow stand-in, because the network is what this figure leaves out.

Issue 19's goals are ratios to the bare VM call (the same program, same trigger) timed in the
same run, alternately with the rotations: median <= 3x and p99 <= 5x the bare call's median.
Beside them, what limits the p99 on a shared machine, each measured in the same run: the bare
call's own p99 (the machine's noise on a call that allocates nothing), the rotations again with
the garbage collector paused, and a floor (validate the turn, run the VM, encode one event per
effect and the ritual, nothing else: what any host built on these libraries must spend); and
the runtime's own VM call timed inside the rotation (amid the turn's Python, its caches cold),
against the same call back to back.

Tried for issue 19 (each measured, best of 400 x 300 calls, on this 2-core machine): payloads
validated once per program constant with only the turn's id put in per turn (with_cause: 0.55
us instead of 0.8-1.3 us; narrative/change reused whole), the envelope's validator called
directly (parse 3.5 -> 2.7 us), one wire template; the events a turn sends handed to their
handlers by one loop callback, not one each (Node.send: median 7.6-7.9x -> 6.7-6.9x, p99 20-26x
-> 18-19x the bare call, 3 interleaved pairs; the collector's pauses came from the callbacks a
block of turns left waiting); the wall clock's JSON made once a millisecond, not a float's repr
per event (median 25.3 -> 24.0 us, 6.76x -> 6.40x, 4 interleaved pairs). msgspec 0.23 would
validate the incoming envelope and payload in 0.9 us (pydantic: 2.7 us) and make + encode a
payload in 0.17 us (pydantic: validate 1.0 + to_json 0.3-0.4 us): at most ~7 us of a rotation,
less than the VM call's own cold-cache cost inside the turn, and only by replacing the pydantic
schema (every part's payloads, `gibsey schema`, the refusal reasons) with a second one: not
taken.

The same rotations run a second time with tracing on (`[telemetry] otlp_endpoint`, core/trace.py):
each turn is a trace (the router's span, the VM's span, every event carrying the context) whose
spans the SDK batches and exports over OTLP/HTTP to a receiver in this process (`_OtlpSink`,
which takes each request and answers 200, as a collector does). The traced rows' baseline is
the untraced figure of the same run, so their ratio is what tracing costs a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.server
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gibsey.bench.nodeproc import open_rotation_throttle
from gibsey.bench.report import Row
from gibsey.core.envelope import GlyphRotated, RitualPerformed, encode_event, parse_event
from gibsey.harness.flood import percentile
from gibsey.node.cli import set_heap_aside
from gibsey.node.config import load_gibsey_config
from gibsey.node.daemon import Node
from gibsey.node.glyph.vm import binding as vm

TURNS = 20_000
WARMUP = 2_000
BLOCK = 100  # turns timed in a row before the bare calls' block (WARMUP is a multiple)
# Issue 19's goals, on the rotation's median and p99 as ratios to the bare VM call's median.
MEDIAN_GOAL = 3.0
P99_GOAL = 5.0
# The floor's payload and program: made once, so the floor times only what every turn must do.
_FLOOR_PAYLOAD = RitualPerformed(symbol=1, rotation=3, state=7, cause="r1", program="p")
_FLOOR_CODE: list[bytes] = []


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


@dataclass
class Samples:
    """Microseconds per call of one run, index by index: the rotation in the host and the bare
    VM call are timed alternately, so both see the same load of a shared machine."""

    host: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU time of the same rotations
    bare: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)  # parse + VM + the events' encodes only
    vm_in_turn: list[float] = field(default_factory=list)  # the host's own VM calls, timed
    gc_off: list[float] = field(default_factory=list)  # the rotations again, collector paused
    # A full collection of this process's heap (the node built, its turns run), ms: as it is,
    # and with it set aside as `gibsey up` sets its start's heap aside (node/cli.py).
    full_pass: list[float] = field(default_factory=list)
    full_pass_aside: list[float] = field(default_factory=list)
    # Runs of bare calls back to back, each as long as a rotation: the machine's own tail.
    machine_run: list[float] = field(default_factory=list)
    calls_per_run: int = 0
    events_per_rotation: int = 0


def _messages(node_id: str, first: int, n: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "id": f"r{i}",
                "node": node_id,
                "kind": "glyph/rotated",
                "lamport": i,
                "wall": 0.0,
                "actor": "bench",
                "payload": {"symbol": 1, "rotation": 3},
            }
        ).encode()
        for i in range(first, first + n)
    ]


def _floor(node: Node, topic: str, raw: bytes, machine: vm.Vm, trigger: vm.Trigger) -> None:
    """The work no host can skip, with the same libraries: validate the turn, run its program,
    encode one event per effect and the ritual (payloads built once, outside the loop)."""
    _, rotated = parse_event(topic, raw, 64 * 1024)
    assert isinstance(rotated, GlyphRotated)
    result = machine.run(_FLOOR_CODE[0], trigger)
    for _ in range(len(result.effects) + 1):
        encode_event(node.node_id, "ritual/performed", _FLOOR_PAYLOAD, 1, "bench")


async def _alternate(node: Node, topic: str, messages: list[bytes], out: Samples) -> None:
    """Blocks of BLOCK turns through the router, then BLOCK bare VM calls, then BLOCK floor
    turns, then BLOCK runs of bare calls as long as a rotation, alternately: the four see the
    same load of a shared machine, and the bare call is timed as issue 19 timed it, call after
    call (each call straight after a rotation would run with the rotation's Python in its
    caches, ~2x slower: a kinder baseline than the issue's)."""
    assert node.parts.glyph is not None
    binding = node.parts.glyph.bindings[1 * 4 + 3]
    _FLOOR_CODE[:] = [binding.bytecode]
    trigger = vm.Trigger(symbol=1, rotation=3, actor=1000)
    machine, floor_machine = vm.Vm(), vm.Vm()
    handle = node.router.handle_message
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for first, block in _blocks(messages):
        keep = first >= WARMUP
        for raw in block:
            c0, t0 = cpu_clock(), clock()
            handle(topic, raw)
            t1, c1 = clock(), cpu_clock()
            if keep:
                out.host.append((t1 - t0) / 1e3)
                out.cpu.append((c1 - c0) / 1e3)
            await _loop_turn()
        for _ in block:
            t0 = clock()
            machine.run(binding.bytecode, trigger)
            if keep:
                out.bare.append((clock() - t0) / 1e3)
        for raw in block:
            t0 = clock()
            _floor(node, topic, raw, floor_machine, trigger)
            if keep:
                out.floor.append((clock() - t0) / 1e3)
        if keep:
            _time_runs(machine, binding.bytecode, trigger, out, len(block))
    machine.close()
    floor_machine.close()


def _time_runs(machine: vm.Vm, code: bytes, trigger: vm.Trigger, out: Samples, n: int) -> None:
    """`n` runs of bare VM calls back to back, each run as long as a rotation (as many calls as
    the rotations' median over the bare call's, fixed at the first timed block): C work with
    no allocation and nothing of the host's, so its p99 over its median is what this machine
    (interrupts, a hypervisor's steal, the other core's load) does to any work that long."""
    if not out.calls_per_run:
        out.calls_per_run = max(1, round(statistics.median(out.host) / statistics.median(out.bare)))
    calls = range(out.calls_per_run)
    clock, run = time.perf_counter_ns, machine.run
    for _ in range(n):
        t0 = clock()
        for _ in calls:
            run(code, trigger)
        out.machine_run.append((clock() - t0) / 1e3)


class _TimedVm:
    """The runtime's Vm, its run timed: the VM call as the host makes it, amid the turn's Python
    (its caches cold), against the bare call made back to back."""

    def __init__(self, machine: vm.Vm, took: list[float]) -> None:
        self._machine = machine
        self._took = took

    def run(self, code: bytes, trigger: vm.Trigger, fuel: int = vm.DEFAULT_FUEL) -> vm.RunResult:
        t0 = time.perf_counter_ns()
        result = self._machine.run(code, trigger, fuel)
        self._took.append((time.perf_counter_ns() - t0) / 1e3)
        return result


def _blocks(messages: list[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """The messages in blocks of BLOCK (with the first one's index)."""
    for first in range(0, len(messages), BLOCK):
        yield first, messages[first : first + BLOCK]


async def _loop_turn() -> None:
    """One turn of the event loop after each rotation (untimed), as a node's loop turns after
    every message it reads: the callbacks the rotation scheduled (Node.send: its handlers take
    each event at the loop's next turn) run and let its events go. Turning only once per block
    held a block's events (4 a turn) alive together, which no node does: the collector's
    youngest generation filled every ~100 turns, twice as often as in a node, and its pauses
    were the p99 (1% of the turns)."""
    await asyncio.sleep(0)


async def _vm_in_turn(node: Node, topic: str, messages: list[bytes]) -> list[float]:
    runtime = node.parts.glyph
    assert runtime is not None
    took: list[float] = []
    machine = runtime.vm
    runtime.vm = _TimedVm(machine, took)  # type: ignore[assignment]
    try:
        for raw in messages:
            node.router.handle_message(topic, raw)
            await _loop_turn()
    finally:
        runtime.vm = machine
    return took


async def _without_gc(node: Node, topic: str, messages: list[bytes]) -> list[float]:
    """The same rotations with the cyclic garbage collector paused: what its pauses add."""
    handle = node.router.handle_message
    clock = time.perf_counter_ns
    took: list[float] = []
    gc.collect()
    gc.disable()
    try:
        for raw in messages:
            t0 = clock()
            handle(topic, raw)
            took.append((clock() - t0) / 1e3)
            await _loop_turn()
    finally:
        gc.enable()
    return took


async def _measure(data: Path, n: int, otlp_endpoint: str = "") -> Samples:
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
    # The events' own handlers (each part's) take them at the loop's next turn, after the
    # rotation (Node.send): not part of this figure, so the callbacks that loop turn runs
    # (after each rotation, untimed: _loop_turn) hand them to no handler.
    node.router.sent = lambda out, echoed: None  # type: ignore[method-assign]
    topic = f"gibsey/v1/{node.node_id}/glyph/rotated"
    out = Samples()
    await _alternate(node, topic, _messages(node.node_id, 0, n + WARMUP), out)
    out.events_per_rotation = sent[0] // (n + WARMUP)
    if not otlp_endpoint:
        out.gc_off = await _without_gc(node, topic, _messages(node.node_id, n + WARMUP, n))
        out.vm_in_turn = await _vm_in_turn(node, topic, _messages(node.node_id, 2 * n + WARMUP, n))
        _full_passes(out)
    runtime = node.parts.glyph
    assert runtime is not None
    ran = len(out.host) + len(out.gc_off) + len(out.vm_in_turn) + WARMUP
    assert runtime.failures == 0 and runtime.runs == ran, "rituals were refused"
    for close in node._closers:
        close()
    return out


def _full_passes(out: Samples, rounds: int = 5) -> None:
    """The cyclic collector's full pass (generation 2, which runs now and then as the heap
    grows, and which a turn arriving then waits for), timed over the heap as it is and with it
    set aside as `gibsey up` does after its start (gc.freeze), in turns."""
    clock = time.perf_counter
    for _ in range(rounds):
        gc.collect()
        t0 = clock()
        gc.collect()
        out.full_pass.append((clock() - t0) * 1e3)
        set_heap_aside()
        t0 = clock()
        gc.collect()
        out.full_pass_aside.append((clock() - t0) * 1e3)
        gc.unfreeze()


def _traced(n: int) -> list[float]:
    """The rotations' wall times with tracing on, exported to a local OTLP receiver."""
    with otlp_sink() as url, tempfile.TemporaryDirectory(prefix="gibsey-bench-traced-") as tmp:
        samples = asyncio.run(_measure(Path(tmp), n, url))
    if not _OtlpSink.exports:
        raise RuntimeError("the traced rotations exported no span: tracing was not on")
    return samples.host


def _limits(s: Samples) -> str:
    """What stops the goals on this machine, measured in this run: the machine's own tail (runs
    of bare calls as long as a rotation: the p99 over the median that any work of that length
    gets here), the rotations' CPU time against their wall time, the bare call's own spread,
    the collector's share, and the floor (the work any host does with these libraries, against
    the 3x goal). A p99 of 5x the bare call with a median above it would need a tail shorter
    than the machine's own."""
    bare = statistics.median(s.bare)
    cpu_p99, wall_p99 = percentile(s.cpu, 0.99), percentile(s.host, 0.99)
    machine_tail = percentile(s.machine_run, 0.99) / statistics.median(s.machine_run)
    return (
        f"limits: runs of {s.calls_per_run} bare calls (as long as a rotation) have a p99 "
        f"{machine_tail:.1f}x their median on this machine, so a rotation at its median "
        f"({statistics.median(s.host) / bare:.1f}x) has a p99 of at least "
        f"{machine_tail * statistics.median(s.host) / bare:.1f}x from the machine alone; "
        f"CPU-time p99 {cpu_p99 / bare:.1f}x ({max(0.0, 1 - cpu_p99 / wall_p99):.0%} of the "
        "p99 off the CPU; a hypervisor's steal counts as CPU time); the bare call's own p99 "
        f"is {percentile(s.bare, 0.99) / bare:.1f}x its median; "
        f"GC paused: p99 {percentile(s.gc_off, 0.99) / bare:.1f}x; "
        f"floor (parse+VM+{s.events_per_rotation} encodes, nothing else): "
        f"median {statistics.median(s.floor) / bare:.1f}x; the host's VM call itself: "
        f"{statistics.median(s.vm_in_turn) / bare:.1f}x"
    )


def _median_limit(s: Samples) -> str:
    """Why the median misses its goal, when it does: the floor's own median, and what was tried
    (the module's docstring says how each was measured)."""
    bare = statistics.median(s.bare)
    if statistics.median(s.host) / bare <= MEDIAN_GOAL:
        return ""
    return (
        f"; not met: the floor alone (parse + VM + {s.events_per_rotation} encodes with these "
        f"libraries: pydantic's validation and serialisation, the VM through ctypes) is "
        f"{statistics.median(s.floor) / bare:.1f}x; tried and taken: payloads validated once per "
        "program constant, the envelope's validator called directly, one wire template, a "
        "turn's events handed on in one loop callback, the wall clock's JSON made once a "
        "millisecond; measured and not taken: msgspec (at most "
        "~7 us of a turn, by a second schema beside pydantic's)"
    )


def _machine_rows(s: Samples) -> list[Row]:
    """The machine's own noise: the bare call's p99 against its median; runs of calls as long
    as a rotation, their p99 against their median; and the collector's full pass."""
    bare = statistics.median(s.bare)
    return [
        Row("bare VM call, p99", percentile(s.bare, 0.99), bare, "us", note="baseline: its median"),
        Row(
            f"{s.calls_per_run} bare VM calls in a row, p99",
            percentile(s.machine_run, 0.99),
            statistics.median(s.machine_run),
            "us",
            note="as long as a rotation: this machine's own tail; baseline: their median",
        ),
        Row(
            "full GC pass, the start's heap set aside",
            statistics.median(s.full_pass_aside),
            statistics.median(s.full_pass),
            "ms",
            note="the collector's full pass, which a turn arriving then waits for; `gibsey up` "
            "sets the heap its start built aside (gc.freeze); baseline: the same pass over "
            "the heap as it is, same run",
        ),
    ]


def run(n: int = TURNS) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-rotation-") as tmp:
        s = asyncio.run(_measure(Path(tmp), n))
    traced = _traced(n)
    bare = statistics.median(s.bare)
    host_p99 = percentile(s.host, 0.99)
    note = (
        f"event in -> verified run -> {s.events_per_rotation} events out; "
        "baseline: the bare VM call's median, same run"
    )
    return [
        Row(
            "rotation in the host, median",
            statistics.median(s.host),
            bare,
            "us",
            goal=("<=", MEDIAN_GOAL),
            note=note + _median_limit(s),
        ),
        Row(
            "rotation in the host, p99",
            host_p99,
            bare,
            "us",
            goal=("<=", P99_GOAL),
            note=_limits(s),
        ),
        *_machine_rows(s),
        Row("rotation, GC paused, median", statistics.median(s.gc_off), bare, "us"),
        Row("rotation, GC paused, p99", percentile(s.gc_off, 0.99), bare, "us"),
        # The floor: validating the turn, the VM and one encode per event, nothing else.
        Row(
            "rotation floor, median",
            statistics.median(s.floor),
            bare,
            "us",
            note="parse + VM + encodes only",
        ),
        Row("rotation floor, p99", percentile(s.floor, 0.99), bare, "us"),
        # The same VM call as the host makes it, amid the turn's Python: its caches cold.
        Row(
            "VM call within a turn, median",
            statistics.median(s.vm_in_turn),
            bare,
            "us",
            note="the runtime's own call, timed; baseline: the same call back to back",
        ),
        # CPU time of the same rotations: what the host spends, free of what other processes
        # on a busy machine do to the wall clock.
        Row("rotation CPU time, median", statistics.median(s.cpu), None, "us"),
        Row("rotation CPU time, p99", percentile(s.cpu, 0.99), None, "us"),
        # What tracing costs: the same rotations traced (spans exported over OTLP), against
        # the untraced ones above (the ratio column); off, tracing makes no SDK object at all.
        Row(
            "rotation traced, median",
            statistics.median(traced),
            statistics.median(s.host),
            "us",
            note="tracing on (OTLP/HTTP export); baseline: tracing off, same run; turns back "
            "to back outrun the exporter, and the SDK drops spans past its queue of 2,048 (its "
            "'Queue full, dropping Span.' on stderr)",
        ),
        Row("rotation traced, p99", percentile(traced, 0.99), host_p99, "us"),
    ]
