"""`gibsey bench dial`: a dial frame written to the serial port -> `ritual/performed` on MQTT.

Node path:  pty master --frame--> `gibsey up` (dial bridge: decode, sequence check, emit
            glyph/rotated) --> Mosquitto --> the node's router, runtime and Zig VM
            --ritual/performed--> Mosquitto --> subscriber
Bare path:  pty master --frame--> a bare relay process (pyserial read, paho publish, nothing
            else) --> Mosquitto --> subscriber

Both read a pseudo-terminal standing in for the Pico's USB serial port, both are one Python
process and the same Mosquitto (set_tcp_nodelay), measured interleaved in one run, one frame in
flight at a time (a visitor turns one detent at a time). The turns are Reads, Writes and
Remembers (`Frames`): a Dream would set the persona generating under the path measured (until
issue 19 a quarter of the turns did, and the "idle" p99 was 4-5 ms with llama.cpp busy; the
dial's latency under the model is `gibsey bench load`'s). The issue's goal is absolute: p99 of the
node path under 5 ms on this machine; the bare relay is there to show what the node adds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.bench.nodeproc import start_up, stop
from gibsey.bench.report import Row
from gibsey.dialcore import frame as df
from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.ports import free_port

GOAL_P99_MS = 5.0

RELAY_SCRIPT = """
import socket, sys, serial, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-relay")
c.max_inflight_messages_set(64)
c.on_connect = lambda cl, u, f, rc, p: cl.socket().setsockopt(
    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
port = serial.Serial(sys.argv[2], 115200, timeout=None)
print("ready", flush=True)
while True:
    line = port.readline()
    if not line:
        break
    c.publish("bench/relay", line.rstrip(), qos=1)
"""


class Arrivals:
    """A paho subscriber counting messages on its topics, with their arrival times."""

    def __init__(self, port: int, *topics: str) -> None:
        self._cond = threading.Condition()
        self.times: dict[str, list[float]] = {t: [] for t in topics}
        self.payloads: dict[str, list[bytes]] = {t: [] for t in topics}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        subscribed = threading.Event()

        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
            c.subscribe([(t, 1) for t in topics])

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            now = time.perf_counter()
            with self._cond:
                for t in topics:
                    if mqtt.topic_matches_sub(t, msg.topic):
                        self.times[t].append(now)
                        self.payloads[t].append(bytes(msg.payload))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench subscriber could not subscribe")

    def wait(self, topic: str, count: int, timeout_s: float = 10.0) -> float:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self.times[topic]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{topic}: {len(self.times[topic])}/{count} arrived")
                self._cond.wait(left)
            return self.times[topic][count - 1]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def open_pty(link: Path) -> int:
    master, slave = os.openpty()
    link.unlink(missing_ok=True)
    link.symlink_to(os.ttyname(slave))
    os.close(slave)
    return master


def round_trips(
    master: int,
    arrivals: Arrivals,
    topic: str,
    frames: list[str],
    start: int,
    gap_s: float = 0.0,
) -> list[float]:
    """Write each frame once the one before it arrived (`gap_s` later: a visitor's pace, so the
    path wakes from sleep for every frame as it does in a gallery); their round trips."""
    out = []
    for i, line in enumerate(frames):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        os.write(master, line.encode())
        out.append(arrivals.wait(topic, start + i + 1) - t0)
    return out


class Frames:
    """Rotate frames numbered across both paths, as one dial would number them. Read, Write and
    Remember only: a Dream asks the persona (the VM's ASK), and llama.cpp answering would load
    the machine under the path measured (`gibsey bench load` loads it on purpose, alone)."""

    def __init__(self) -> None:
        self.seq = 0

    def next(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            self.seq += 1
            out.append(df.rotate(self.seq, 7, self.seq % 3, self.seq))
        return out


_RITUALS = "gibsey/v1/+/ritual/performed"
_ALERTS = "gibsey/v1/+/safety/alert"
_RELAYED = "bench/relay"


@dataclass
class DialRig:
    """A node reading a dial on a pty and a bare serial->MQTT relay on another, one Mosquitto."""

    data: Path
    node: subprocess.Popen[bytes]
    arrivals: Arrivals
    node_master: int  # write dial frames here: the node's serial port
    relay_master: int  # and here: the bare relay's


@contextlib.contextmanager
def dial_rig(
    work: Path, configure: Callable[[Path, Path], None], *topics: str
) -> Iterator[DialRig]:
    """The rig of the dial benches (this one and bench/load.py): `configure(data, tty)` writes
    the node's gibsey.toml; `topics` are what `arrivals` records. Everything is stopped after."""
    broker = Mosquitto(work / "mosq", port=free_port()).start()
    data = work / "node"
    node_link, relay_link = work / "ttyDIAL", work / "ttyRELAY"
    node_master, relay_master = open_pty(node_link), open_pty(relay_link)
    configure(data, node_link)
    arrivals = Arrivals(broker.port, *topics)
    node = start_up(data, broker.url)
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY_SCRIPT, str(broker.port), str(relay_link)],
        stdout=subprocess.PIPE,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
        yield DialRig(data, node, arrivals, node_master, relay_master)
    finally:
        arrivals.close()
        stop(node, timeout_s=30)
        relay.kill()
        relay.wait()
        os.close(node_master)
        os.close(relay_master)
        broker.stop()


def _config(data: Path, tty: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    # The throttles open: one dial turned back to back is far past a visitor's bounds, and a
    # refused turn gets no ritual (the bench would wait for it in vain).
    (data / "gibsey.toml").write_text(
        "[node]\nvisitor_inputs_per_second = 1000000.0\n"
        "visitor_inputs_per_source_per_second = 1000000.0\n"
        f'[dial]\nserial = "{tty}"\nscan_interval = 0.05\nmqtt = false\n'
        "[agent]\nrotations_per_second = 1000000.0\n"
    )


def run(rounds: int = 600, repeats: int = 3, warmup: int = 30) -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="gibsey-bench-dial-") as tmp,
        dial_rig(Path(tmp), _config, _RITUALS, _ALERTS, _RELAYED) as rig,
    ):
        wait_for_bridge(rig.arrivals, rig.node)
        os.write(rig.node_master, df.hello(0, "bench", "gdial-1.0.0", 7, 0, True).encode())
        paths = {_RITUALS: rig.node_master, _RELAYED: rig.relay_master}
        times = _interleaved(paths, rig.arrivals, rounds // repeats, repeats, warmup)
        last = json.loads(rig.arrivals.payloads[_RITUALS][-1])["payload"]
    return _rows(times[_RITUALS], times[_RELAYED], last["program"] or "-")


def wait_for_bridge(arrivals: Arrivals, node: subprocess.Popen[bytes]) -> None:
    """The bridge says it has the port (dial_connected) once it is reading it."""
    deadline = time.monotonic() + 30
    while not any(b"dial_connected" in p for p in arrivals.payloads[_ALERTS]):
        if time.monotonic() > deadline or node.poll() is not None:
            raise RuntimeError("the node's dial bridge did not open the bench's pty")
        arrivals.wait(_ALERTS, len(arrivals.times[_ALERTS]) + 1, timeout_s=30)


def _interleaved(
    paths: dict[str, int], arrivals: Arrivals, rounds: int, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Round trips of each path (the topic its frames arrive on -> the pty master they are
    written to): `warmup` unmeasured, then `repeats` turns of `rounds`, interleaved so machine
    noise hits every path alike. Frames are numbered across paths, as one dial would."""
    frames = Frames()
    for topic, master in paths.items():
        round_trips(master, arrivals, topic, frames.next(warmup), 0)
    times: dict[str, list[float]] = {topic: [] for topic in paths}
    for _ in range(repeats):
        for topic, master in paths.items():
            start = len(arrivals.times[topic])
            times[topic] += round_trips(master, arrivals, topic, frames.next(rounds), start)
    return times


def _rows(node_rt: list[float], bare_rt: list[float], program: str) -> list[Row]:
    med_node = statistics.median(node_rt) * 1e3
    med_bare = statistics.median(bare_rt) * 1e3
    p99_node = statistics.quantiles(node_rt, n=100)[98] * 1e3
    p99_bare = statistics.quantiles(bare_rt, n=100)[98] * 1e3
    met = "met" if p99_node < GOAL_P99_MS else "NOT met"
    return [
        Row(
            "serial frame -> ritual/performed, median",
            med_node,
            med_bare,
            "ms",
            note=f"{len(node_rt)} frames; baseline: bare serial->MQTT relay",
        ),
        Row(
            "serial frame -> ritual/performed, p99",
            p99_node,
            p99_bare,
            "ms",
            note=f"goal: p99 < {GOAL_P99_MS:g} ms absolute, {met}; program {program}",
        ),
    ]
