"""`gibsey bench spine`: the node's event path against a bare paho echo, same Mosquitto, same run.

Node path:  driver --glyph/rotated--> Mosquitto --> `gibsey up` (router, ritual handler)
            --ritual/performed--> Mosquitto --> driver
Bare path:  driver --bench/in--> Mosquitto --> paho echo client --bench/out--> Mosquitto --> driver

Both round trips cross the broker twice with QoS 1 and a Python process in the middle, so the
ratio isolates what the node adds (validation, routing, the envelope, the outbox). The driver is
the same paho client for both. Round trip: median over sequential single events. Throughput:
a burst of events, counted when the last answer arrives.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.bench.nodeproc import open_rotation_throttle, start_up, stop, wait_for_file
from gibsey.bench.report import Row
from gibsey.core.mqtt import ClientSettings, Session, new_client_id
from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.ports import free_port
from gibsey.harness.waiting import wait_port
from gibsey.node.glyph.opcode_table import OpcodeTable
from gibsey.node.glyph.vm.asm import assemble

BENCH_SYMBOL, BENCH_ROTATION = 7, 3

ECHO_SCRIPT = """
import socket, sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-echo")
c.max_inflight_messages_set(64)
def on_connect(cl, u, f, rc, p):
    cl.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cl.subscribe("bench/in", qos=1)
def on_message(cl, u, m):
    cl.publish("bench/out", m.payload, qos=1)
c.on_connect = on_connect
c.on_message = on_message
c.connect("127.0.0.1", int(sys.argv[1]))
print("ready", flush=True)
c.loop_forever()
"""


class Driver:
    """A paho client that publishes requests and waits for answers matched by a key."""

    def __init__(self, port: int, answer_topic: str, key: Callable[[bytes], str]) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._arrived: dict[str, float] = {}
        self._cond = threading.Condition(self._lock)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"drv-{uuid.uuid4().hex[:6]}"
        )
        self.client.max_inflight_messages_set(64)
        subscribed = threading.Event()

        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            # paho leaves Nagle's algorithm on; small messages would wait for delayed ACKs.
            c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
            c.subscribe(answer_topic, qos=1)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench driver could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        with self._cond:
            self._arrived[self._key(bytes(msg.payload))] = now
            self._cond.notify_all()

    def wait_for(self, keys: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not keys <= self._arrived.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = len(keys - self._arrived.keys())
                    raise TimeoutError(f"{missing} answers missing after {timeout_s}s")
                self._cond.wait(left)

    def round_trips(self, topic: str, make: Callable[[str], bytes], n: int) -> list[float]:
        out = []
        for _ in range(n):
            key = uuid.uuid4().hex
            t0 = time.perf_counter()
            self.client.publish(topic, make(key), qos=1)
            self.wait_for({key}, 10)
            out.append(self._arrived[key] - t0)
        return out

    def throughput(self, topic: str, make: Callable[[str], bytes], n: int, window: int) -> float:
        """Events/s with at most `window` requests unanswered: a sustained rate that a bounded
        system can keep up indefinitely, not a burst that only measures queue sizes."""
        keys = [uuid.uuid4().hex for _ in range(n)]
        t0 = time.perf_counter()
        for i, key in enumerate(keys):
            if i >= window:
                self.wait_for({keys[i - window]}, 60)
            self.client.publish(topic, make(key), qos=1)
        self.wait_for(set(keys), 60)
        return n / (max(self._arrived[k] for k in keys) - t0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _rotation(node_id: str) -> Callable[[str], bytes]:
    def make(key: str) -> bytes:
        return json.dumps(
            {
                "id": key,
                "node": node_id,
                "kind": "glyph/rotated",
                "lamport": 1,
                "wall": 0.0,
                "actor": "bench",
                "payload": {"symbol": BENCH_SYMBOL, "rotation": BENCH_ROTATION},
            }
        ).encode()

    return make


def _prepare(data: Path) -> None:
    """Measure the spine, not a glyph's program: the benchmark's state runs a bare HALT, the
    rotation throttle is opened wide (the driver is one actor turning thousands of times a
    second), and the gateway stays off."""
    open_rotation_throttle(data)
    table = OpcodeTable.open(data)
    try:
        table.bind(BENCH_SYMBOL * 4 + BENCH_ROTATION, assemble("    HALT\n"), origin="bench")
    finally:
        table.close()


def _wait_online(port: int, node_id: str, timeout_s: float = 60.0) -> None:
    """The node announces itself (retained node/status) only after it has subscribed."""
    asyncio.run(_until_online(port, node_id, timeout_s))


async def _until_online(port: int, node_id: str, timeout_s: float) -> None:
    settings = ClientSettings(f"mqtt://127.0.0.1:{port}", new_client_id("wait"))
    async with Session(settings) as session:
        await session.subscribe(f"gibsey/v1/{node_id}/node/status", qos=1)

        async def online() -> None:
            async for msg in session.messages():
                if json.loads(msg.payload).get("state") == "online":
                    return

        try:
            await asyncio.wait_for(online(), timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"node {node_id} did not come online within {timeout_s:g}s"
            ) from None


def _start_node(workdir: Path, broker: Mosquitto) -> tuple[subprocess.Popen[bytes], str]:
    data = workdir / "node"
    _prepare(data)
    proc = start_up(data, broker.url)
    wait_for_file(proc, data / "node_id", 30, "the node")
    node_id = (data / "node_id").read_text().strip()
    _wait_online(broker.port, node_id)
    return proc, node_id


def run(rounds: int = 300, burst: int = 3000, repeats: int = 3, window: int = 100) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosq", port=free_port()).start()
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO_SCRIPT, str(broker.port)], stdout=subprocess.PIPE
        )
        node, node_id = _start_node(work, broker)
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
            bare = Driver(broker.port, "bench/out", lambda p: p.decode())
            via_node = Driver(
                broker.port,
                f"gibsey/v1/{node_id}/ritual/performed",
                lambda p: json.loads(p)["payload"]["cause"],
            )
            rotate = _rotation(node_id)
            topic = f"gibsey/v1/{node_id}/glyph/rotated"
            # Warm both paths (first connections, imports, caches) before measuring.
            via_node.wait_for(set(), 1)
            via_node.round_trips(topic, rotate, 20)
            bare.round_trips("bench/in", str.encode, 20)
            node_rt: list[float] = []
            bare_rt: list[float] = []
            node_tp: list[float] = []
            bare_tp: list[float] = []
            # Interleave the two paths so machine noise hits both alike.
            for _ in range(repeats):
                node_rt += via_node.round_trips(topic, rotate, rounds // repeats)
                bare_rt += bare.round_trips("bench/in", str.encode, rounds // repeats)
                node_tp.append(via_node.throughput(topic, rotate, burst, window))
                bare_tp.append(bare.throughput("bench/in", str.encode, burst, window))
            bare.close()
            via_node.close()
        finally:
            stop(node, timeout_s=10)
            echo.kill()
            echo.wait()
            broker.stop()
    med_node = statistics.median(node_rt) * 1e6
    med_bare = statistics.median(bare_rt) * 1e6
    p99_node = statistics.quantiles(node_rt, n=100)[98] * 1e6
    p99_bare = statistics.quantiles(bare_rt, n=100)[98] * 1e6
    return [
        Row(
            "round trip glyph/rotated -> ritual/performed, median",
            med_node,
            med_bare,
            "us",
            goal=("<=", 2.0),
            note="baseline: bare paho echo",
        ),
        Row("round trip p99", p99_node, p99_bare, "us"),
        Row(
            "sustained events/s through the router",
            statistics.median(node_tp),
            statistics.median(bare_tp),
            "events/s",
            goal=(">=", 0.5),
            note=f"{burst} events, {window} in flight",
        ),
    ]


__all__ = ["run", "wait_port"]
