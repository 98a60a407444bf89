"""`gibsey bench mesh`: N mesh nodes on loopback, each with K new entries: time until every node
holds everything, and bytes sent next to the lower bound.

Nodes are in-process: N asyncio MeshNodes in one event loop, each with its own ZeroMQ context
(its own I/O thread and ZAP authenticator), its own CurveZMQ keys, ROUTER and DEALER sockets on
real loopback TCP ports, and its own SQLite store (synchronous=FULL, as deployed). Twenty Python
processes on two cores would measure process scheduling more than the mesh; one loop serialises
all the nodes' Python work, so the times here are pessimistic for N machines.

Bytes: what the nodes hand to ZeroMQ (every frame of every message, rounds included) plus 35
bytes per frame for ZMTP and CurveZMQ framing (a MESSAGE command: name, nonce, MAC, flags);
TCP/IP headers are not counted. The bound: every missing entry's bytes carried once to each
node that lacks it, i.e. sum(entry bytes) * (N - 1). Goal: bytes <= 1.5x the bound.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

from gibsey.bench.report import Row
from gibsey.ledger.store import Store
from gibsey.mesh.config import MeshConfig, PeerSpec
from gibsey.mesh.node import MeshNode

FRAME_OVERHEAD = 35
RUNS = int(os.environ.get("GIBSEY_BENCH_MESH_RUNS", "3"))
K = int(os.environ.get("GIBSEY_BENCH_MESH_K", "50"))
SIZES = tuple(int(x) for x in os.environ.get("GIBSEY_BENCH_MESH_NODES", "10,20").split(","))


def _ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def _run_once(tmp: Path, n: int, k: int) -> tuple[float, int, int]:
    keys = [SigningKey(os.urandom(32)) for _ in range(n)]
    pubs = [bytes(key.verify_key) for key in keys]
    eps = [f"tcp://127.0.0.1:{p}" for p in _ports(n)]
    stores = [Store.open(tmp / f"n{i}") for i in range(n)]
    meshes = []
    for i in range(n):
        cfg = MeshConfig(listen=eps[i], beacon_port=0)
        cfg.peers = [PeerSpec(pubs[j], eps[j]) for j in range(n) if j != i]
        meshes.append(MeshNode(stores[i], keys[i], cfg))
    try:
        for m in meshes:
            await m.start()
        deadline = time.monotonic() + 60
        while not all(p.heard and p.state == "up" for m in meshes for p in m.peers.values()):
            if time.monotonic() > deadline:
                bad = [
                    (i, p.hex[:8], p.state, p.heard)
                    for i, m in enumerate(meshes)
                    for p in m.peers.values()
                    if not (p.heard and p.state == "up")
                ]
                raise TimeoutError(f"mesh did not connect: {bad[:10]}")
            await asyncio.sleep(0.01)
        base = [(m.stats.bytes_out, m.stats.frames_out) for m in meshes]
        t0 = time.perf_counter()
        entry_bytes = 0
        for i in range(n):
            body = {"actor": "london-fox", "amount": 1, "ritual": "read"}
            new = stores[i].append_many(keys[i], [("mint", body)] * k)
            entry_bytes += sum(len(e.raw) for e in new)
            await asyncio.sleep(0)
        total = n * k + n  # and each node's `members` entry, recorded when its mesh starts
        while not all(s.count() == total for s in stores):
            if time.perf_counter() - t0 > 60:
                counts = [s.count() for s in stores]
                raise TimeoutError(f"mesh did not converge: {counts} of {total}")
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        sent = sum(
            (m.stats.bytes_out - b) + FRAME_OVERHEAD * (m.stats.frames_out - f)
            for m, (b, f) in zip(meshes, base, strict=True)
        )
        return elapsed, sent, entry_bytes * (n - 1)
    finally:
        for m in meshes:
            try:
                await asyncio.wait_for(m.stop(), 10)
            except TimeoutError:
                print("bench mesh: a node did not stop within 10 s", file=sys.stderr)
        for s in stores:
            s.close()


def run() -> list[Row]:
    rows: list[Row] = []
    for n in SIZES:
        times: list[float] = []
        runs: list[tuple[int, int]] = []
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory(prefix="gibsey-bench-mesh-") as tmp:
                t, sent, bound = asyncio.run(_run_once(Path(tmp), n, K))
            times.append(t)
            runs.append((sent, bound))
        ratios = [s / b for s, b in runs]
        sent, bound = runs[sorted(range(len(runs)), key=lambda i: ratios[i])[len(runs) // 2]]
        rows.append(
            Row(
                f"{n} nodes x {K} entries: bytes sent",
                sent,
                bound,
                "B",
                goal=("<=", 1.5),
                note=f"median run of {RUNS}; ratios {', '.join(f'{x:.2f}' for x in ratios)}",
            )
        )
        rows.append(
            Row(
                f"{n} nodes x {K} entries: time to converge",
                statistics.median(times),
                None,
                "s",
                note=f"median of {RUNS}; min {min(times):.3f} max {max(times):.3f}",
            )
        )
    return rows
