"""`gibsey bench gateway`: requests/s and p99 of the gateway's status and rotate endpoints, next
to the same framework's bare hello-world (FastAPI on uvicorn) in the same run.

Each server runs in its own process (`gibsey up --http 127.0.0.1:0` against Mosquitto, and a
bare FastAPI app on uvicorn); the load generator is an asyncio HTTP/1.1 keep-alive client in this
process with a fixed number of connections, bounded in requests and in time, on 127.0.0.1 only.
A rotate is the whole path: token check, glyph/rotated published and acknowledged by the broker
(the node then runs the ritual in the VM).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gibsey.bench.nodeproc import start_up, stop, wait_for_file
from gibsey.bench.report import Row
from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.ports import free_port

TOKEN = "bench-token"
HELLO_SCRIPT = """
import socket, sys, asyncio, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/hello")
async def hello() -> dict:
    return {"hello": "world"}
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0)); sock.listen(256)
print(sock.getsockname()[1], flush=True)
server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
asyncio.run(server.serve(sockets=[sock]))
"""


@dataclass
class Load:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p99_ms(self) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


def _request(method: str, path: str, body: bytes = b"", token: bool = False) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive"]
    if token:
        head.append(f"Authorization: Bearer {TOKEN}")
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _one_connection(
    port: int, raw: bytes, stop_at: float, budget: list[int], out: Load
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            out.latencies.append(time.perf_counter() - t0)
            out.requests += 1
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")):
                out.errors += 1
    finally:
        writer.close()


async def _load(port: int, raw: bytes, connections: int, requests: int, seconds: float) -> Load:
    out = Load(0, 0.0, [], 0)
    budget = [requests]
    start = time.perf_counter()
    await asyncio.gather(
        *(_one_connection(port, raw, start + seconds, budget, out) for _ in range(connections))
    )
    out.seconds = time.perf_counter() - start
    return out


def measure(
    port: int, raw: bytes, connections: int, requests: int, seconds: float, warmup: int = 200
) -> Load:
    asyncio.run(_load(port, raw, connections, warmup, seconds))
    return asyncio.run(_load(port, raw, connections, requests, seconds))


def _start_node(work: Path, broker: Mosquitto) -> tuple[subprocess.Popen[bytes], int]:
    data = work / "node"
    proc = start_up(data, broker.url, "127.0.0.1:0", GIBSEY_GATEWAY_TOKEN=TOKEN)
    wait_for_file(proc, data / "gateway.json", 60, "the node's gateway")
    return proc, int(json.loads((data / "gateway.json").read_text())["port"])


def run(connections: int = 16, requests: int = 5000, seconds: float = 5.0) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosq", port=free_port()).start()
        hello = subprocess.Popen([sys.executable, "-c", HELLO_SCRIPT], stdout=subprocess.PIPE)
        node: subprocess.Popen[bytes] | None = None
        try:
            assert hello.stdout is not None
            hello_port = int(hello.stdout.readline())
            node, port = _start_node(work, broker)
            bare = measure(hello_port, _request("GET", "/hello"), connections, requests, seconds)
            status = measure(port, _request("GET", "/api/status"), connections, requests, seconds)
            body = b'{"symbol": 7, "rotation": 3, "actor": "bench"}'
            rotate = measure(
                port,
                _request("POST", "/api/glyph/rotate", body, token=True),
                connections,
                requests // 2,
                seconds,
            )
        finally:
            if node is not None:
                stop(node)
            stop(hello)
            broker.stop()
    note = f"{connections} keep-alive connections"
    rows = [
        Row("bare FastAPI hello-world", bare.rps, None, "req/s", note=note),
        Row("GET /api/status", status.rps, bare.rps, "req/s", note=note),
        Row("POST /api/glyph/rotate", rotate.rps, bare.rps, "req/s", note="publish + broker ack"),
        Row("bare hello-world p99", bare.p99_ms, None, "ms"),
        Row("GET /api/status p99", status.p99_ms, bare.p99_ms, "ms"),
        Row("POST /api/glyph/rotate p99", rotate.p99_ms, bare.p99_ms, "ms"),
    ]
    errors = bare.errors + status.errors + rotate.errors
    if errors:
        rows.append(Row("non-2xx answers (should be 0)", errors, None, "count", limit=("<=", 0)))
    return rows
