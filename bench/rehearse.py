"""`gibsey bench rehearse`: how many nodes this machine sustains as a rehearsal gallery.

For 1, 3, 5 and 10 nodes (gibsey.harness.gallery: each a real `gibsey up` with its own
Mosquitto, meshed over loopback), every node's virtual dial turns at RATE frames per second
(Read/Write/Remember, as visitors would; each dial at its own seeded phase, as independent
visitors turn them) for SECONDS; then again for 1 and 10 nodes whose visitors also ask the
personas (a tenth of the turns are Dreams: the VM's ASK; the model preloaded on every node, so
every node's llama.cpp worker generates throughout, at the node's default priorities: AGENTS.md
"Priorities"). Measured per gallery:

- dial frame -> ritual p99 (ms): publish of the dial frame on the node's broker to the arrival
  of its `ritual/performed` at a client on the same broker, over all nodes. Limit 5 ms.
  Baseline: a bare MQTT echo (ECHO_SCRIPT) turned as one more dial at the same time and timed
  by the same kind of client: what the machine adds before a node does anything.
- the bare echo's p99, against the echo beside one idle node.
- RSS per node (MiB): the daemon's resident memory at the end (the model worker not counted).
- time for the room to converge after the turning stops (s).

"Nodes sustained" is the largest size without questions whose p99 stays under 5 ms. The rotation
and question throttles are raised for the run ([agent] rotations_per_second,
requests_per_minute) so the figure is the machine's, not the safety inverter's.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gibsey.bench.report import Row
from gibsey.harness.flood import percentile
from gibsey.harness.gallery import Gallery, GalleryConfig, GalleryError
from gibsey.harness.waiting import wait_until
from gibsey.harness.watch import NodeClient
from gibsey.node.dial.bridge import frame_topic

SIZES = (1, 3, 5, 10)
# Galleries whose visitors also ask the personas (a tenth of the turns are Dreams: the VM's ASK),
# so every node's model worker generates throughout, at the node's default priorities.
ASKING_SIZES = (1, 10)
RATE = 5.0  # dial frames per second per node
SECONDS = 20.0  # 100 turns per node: a p99 that is not just the maximum
LIMIT_MS = 5.0
# The bare baseline, turned like one more node of the gallery at the same time and timed by the
# same kind of client in this process: a paho process on node 1's broker that answers each R
# frame with a `ritual/performed` and does nothing else. Its p99 is what the machine (its cores
# shared by every node, broker and client of the gallery, and this process's own threads) adds
# before a node does any work.
BARE = "bare"
ECHO_SCRIPT = """
import socket, sys, paho.mqtt.client as mqtt
out = "gibsey/v1/bare/ritual/performed"
def on_connect(c, u, f, rc, p):
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.subscribe(sys.argv[2], 1)
def on_message(c, u, msg):
    if msg.payload.split(b",")[2:3] == [b"R"]:
        c.publish(out, b'{"actor": "dial", "payload": {}}', qos=1)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-echo")
c.on_connect, c.on_message = on_connect, on_message
c.on_subscribe = lambda *a: print("ready", flush=True)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
"""


# p99 ms, RSS MiB per node, converge s, bare p99 ms, CPU cores (daemons and brokers, workers),
# the machine's load average when the turning stopped (others' processes count too)
Measured = tuple[float, float, float, float, float, float, float]


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3 onwards); [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def _cpu_s(g: Gallery) -> tuple[float, float]:
    """CPU seconds used so far by the gallery's daemons and brokers, and by the daemons'
    children (the model workers): proc(5) utime + stime."""
    daemons = {n.proc.pid for n in g if n.proc is not None}
    brokers = {n.broker.proc.pid for n in g if n.broker.proc is not None}
    ours_pids = daemons | brokers
    ours = workers = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if not fields:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if int(entry.name) in ours_pids:
            ours += ticks
        elif int(fields[1]) in daemons:
            workers += ticks
    tick = os.sysconf("SC_CLK_TCK")
    return ours / tick, workers / tick


def _p99_ms(lat: list[float]) -> float:
    return percentile(lat, 0.99) * 1000


def _meshed(g: Gallery) -> None:
    try:
        wait_until(g.meshed, 60, "the mesh")
    except GalleryError:
        # Say which links never came up (seen once at 10 nodes, not reproduced in five runs
        # since): the next person needs more than "timed out".
        for node in g:
            down = [
                f"{p.get('endpoint')}={p.get('state')}"
                for p in node.mesh_status().get("peers", [])
                if p.get("state") != "up"
            ]
            if down:
                print(f"{node.name}: peers not up: {', '.join(down)}", file=sys.stderr)
        raise


def _answering(clients: list[NodeClient]) -> bool:
    """Every node's persona has answered once (its worker is loaded and generating)."""
    return all(c.kinds.get("agent/emit", 0) > 0 for c in clients)


def _turn(clients: list[NodeClient], rng: random.Random, rotations: tuple[int, ...]) -> None:
    """Each dial turned steadily at RATE by its own visitor, for SECONDS: dials are independent,
    so each gets its own (seeded) phase in the period. Turning every dial in the same
    millisecond would measure a synchronised burst no gallery produces."""
    period = 1.0 / RATE
    phases = [rng.random() * period for _ in clients]
    schedule = sorted(
        (k * period + phases[i], i) for k in range(int(SECONDS * RATE)) for i in range(len(clients))
    )
    start = time.monotonic()
    for at, i in schedule:
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        clients[i].turn(rng.randrange(16), rng.choice(rotations))


def _measure(n: int, asking: bool = False) -> Measured:
    """One gallery of n nodes; `asking`: a tenth of the turns are Dreams, each asking the
    symbol's persona (the VM's ASK), the model preloaded on every node, so every node's
    llama.cpp worker generates throughout (a backlog of questions waits in its queue)."""
    agent: dict[str, object] = {"rotations_per_second": 1000.0}
    rotations: tuple[int, ...] = (0, 0, 1, 2)
    if asking:
        agent |= {"preload": True, "requests_per_minute": 1e6, "requests_burst": 1e6}
        rotations = (0, 0, 0, 0, 1, 1, 1, 2, 2, 3)
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-rehearse-") as tmp:
        # [agent] threads is the node's default (all cores but one), as on a Pi.
        g = Gallery(
            Path(tmp), GalleryConfig(nodes=n, agent={"max_tokens": 24, "memory": False} | agent)
        )
        echo: subprocess.Popen[bytes] | None = None
        bare: NodeClient | None = None
        try:
            g.start(timeout_s=180)
            if n > 1:
                _meshed(g)
            port = g.nodes[0].broker.port
            echo = subprocess.Popen(
                [sys.executable, "-c", ECHO_SCRIPT, str(port), frame_topic(BARE, "rehearsal")],
                stdout=subprocess.PIPE,
            )
            assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
            bare = NodeClient(BARE, port)
            clients = [node.client for node in g if node.client is not None] + [bare]
            rng = random.Random(n)
            # warm up (first ritual opens SQLite pages, JITs nothing but caches plenty)
            for client in clients:
                client.turn(0, 3 if asking else 0)
            if asking:
                wait_until(lambda: _answering(clients[:-1]), 300, "every persona's first answer")
            time.sleep(1.0)
            for client in clients:
                client.latencies.clear()
            cpu0, t_start = _cpu_s(g), time.monotonic()
            _turn(clients, rng, rotations)
            t_stop = time.monotonic()
            cpu1 = _cpu_s(g)
            span_s = t_stop - t_start
            cores = ((cpu1[0] - cpu0[0]) / span_s, (cpu1[1] - cpu0[1]) / span_s)
            load = os.getloadavg()[0]
            wait_until(g.converged, 120, "convergence", step_s=0.05)
            converge = time.monotonic() - t_stop
            lat = [x for client in clients[:-1] for x in client.latencies]
            rss = sum(node.rss_kib() for node in g) / n / 1024
            return _p99_ms(lat), rss, converge, _p99_ms(list(bare.latencies)), *cores, load
        finally:
            if bare is not None:
                bare.close()
            if echo is not None:
                echo.kill()
                echo.wait()
            g.stop()


def _p99_limit(p99: float, bare: float, cores: float, workers: float) -> str:
    """Why a gallery's p99 misses the 5 ms limit, when it does: what the machine did to a
    process that does nothing but answer, at the same time, and how busy its cores were."""
    if p99 <= LIMIT_MS:
        return ""
    machine = os.cpu_count() or 1
    where = (
        "the machine's own limit: the bare echo alone misses it"
        if bare > LIMIT_MS
        else f"the bare echo is {p99 / bare:.1f}x faster; the nodes' own work on shared cores"
    )
    return (
        f"; not met: {where} ({bare:.2f} ms p99 at the same time, with the daemons and brokers "
        f"on {cores:.2f} of {machine} cores and the model workers on {workers:.2f}); tried and "
        "taken: the node's CPU per event (`gibsey bench spine`), the workers' priorities "
        "(node/agents/AGENTS.md)"
    )


def _rows(label: str, result: Measured, base: Measured | None) -> list[Row]:
    p99, rss, conv, bare, cores, workers, load = result
    return [
        Row(
            f"{label}: dial frame -> ritual p99 ({RATE:g} turns/s per node)",
            p99,
            bare,
            "ms",
            limit=("<=", LIMIT_MS),
            note="baseline: a bare MQTT echo turned with them, same clients, same time"
            + _p99_limit(p99, bare, cores, workers),
        ),
        Row(
            f"{label}: bare MQTT echo p99, same time",
            bare,
            base[3] if base else None,
            "ms",
            note="baseline: the echo beside 1 idle node; what the machine alone adds",
        ),
        Row(f"{label}: RSS per node", rss, base[1] if base else None, "MiB", note="daemon only"),
        Row(f"{label}: converge after the turning stops", conv, None, "s"),
        Row(
            f"{label}: CPU of the daemons and brokers while turning",
            cores,
            float(os.cpu_count() or 1),
            "cores",
            note=f"baseline: the machine's cores; the model workers: {workers:.2f} cores; "
            f"load average {load:.1f}",
        ),
    ]


def run() -> list[Row]:
    rows: list[Row] = []
    results: dict[tuple[int, bool], Measured] = {}
    for n, asking in [(n, False) for n in SIZES] + [(n, True) for n in ASKING_SIZES]:
        try:
            results[(n, asking)] = _measure(n, asking)
        except GalleryError as exc:
            label = f"{n} nodes" + (", personas answering" if asking else "")
            rows.append(Row(label, float("nan"), None, "ms", note=f"failed: {exc}"[:120]))
    base = results.get((1, False))
    for (n, asking), result in results.items():
        label = f"{n:2d} nodes" + (", personas answering" if asking else "")
        rows += _rows(label, result, base)
    sustained = max((n for (n, a), r in results.items() if not a and r[0] <= LIMIT_MS), default=0)
    rows.append(
        Row(
            f"nodes sustained at {RATE:g} turns/s per node with p99 <= {LIMIT_MS:g} ms",
            float(sustained),
            None,
            "nodes",
            note=f"of {', '.join(map(str, SIZES))} tried",
        )
    )
    return rows
