"""`gibsey bench footprint`: the daemon's resident memory with the model not loaded.

A `gibsey up` against Mosquitto, as the rehearsal starts one (the agents attached, no persona
asked: neither the llama.cpp worker nor the embedder loaded), its VmRSS (/proc/PID/status) read
SETTLE_S after its READY=1 on a NOTIFY_SOCKET (what systemd waits for); the median of RUNS starts
on the same data (the first start, which makes the identity and the stores, is not counted).
With the gateway (HTTP on, the default) and without (`--http off`). Baselines, same run: a bare
`python -c 'import time; time.sleep(60)'`, and what the gateway's web framework alone adds to a
Python process that imported the daemon (`import fastapi, uvicorn`, nothing built), the part the
gateway needs while it runs. Goal: at most 60 MiB (a Pi Zero 2 W has 512 MB).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gibsey.bench.nodeproc import start_up, stop
from gibsey.bench.report import Row
from gibsey.harness.mosquitto import Mosquitto

RUNS = 3
SETTLE_S = 3.0  # after READY: the services' first rounds (status, the agents' state) have run
GOAL_MIB = 60.0
_MARK = "up"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def _node_rss(data: Path, broker_url: str, http: str, sock_path: Path) -> float:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(60)
        proc = start_up(data, broker_url, http, NOTIFY_SOCKET=str(sock_path))
        try:
            while "READY=1" not in sock.recv(4096).decode().split("\n"):
                pass
            time.sleep(SETTLE_S)
            return rss_mib(proc.pid)
        finally:
            stop(proc)
            sock_path.unlink(missing_ok=True)


def _python_rss(code: str) -> float:
    """RSS of a Python process once it has run `code` and said so (it then sleeps)."""
    script = f"{code}\nimport sys, time\nprint({_MARK!r}, flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != _MARK:
            raise RuntimeError(f"the baseline process did not start: {code!r}")
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-footprint-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosq").start()
        try:
            figures: dict[str, list[float]] = {"127.0.0.1:0": [], "off": []}
            for http, runs in figures.items():
                data = work / f"data-{http.replace(':', '_')}"
                _node_rss(data, broker.url, http, work / "n.sock")  # makes the identity
                runs += [_node_rss(data, broker.url, http, work / "n.sock") for _ in range(RUNS)]
        finally:
            broker.stop()
    bare = statistics.median(_python_rss("pass") for _ in range(RUNS))
    # What the web framework adds to a process that already holds the rest of the daemon.
    core = statistics.median(_python_rss("import gibsey.node.daemon") for _ in range(RUNS))
    both = "import gibsey.node.daemon, fastapi, uvicorn"
    web = statistics.median(_python_rss(both) for _ in range(RUNS)) - core
    common = f"median of {RUNS} starts, VmRSS {SETTLE_S:g} s after READY=1; baseline: bare python"
    return [
        Row(
            "daemon RSS, model not loaded, gateway on",
            statistics.median(figures["127.0.0.1:0"]),
            bare,
            "MiB",
            limit=("<=", GOAL_MIB),
            note=f"{common}; the gateway's web framework is what the row below lacks: FastAPI "
            f"and uvicorn alone add {web:.1f} MiB to a Python that imported the daemon (GraphQL, "
            "NumPy, amqtt, zmq load only when used)",
        ),
        Row(
            "daemon RSS, model not loaded, gateway off (--http off)",
            statistics.median(figures["off"]),
            bare,
            "MiB",
            limit=("<=", GOAL_MIB),
            note=common,
        ),
    ]
