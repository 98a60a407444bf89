"""`gibsey bench footprint`: the daemon's resident memory with the model not loaded.

A `gibsey up` against Mosquitto, as the rehearsal starts one (the agents attached, no persona
asked: neither the llama.cpp worker nor the embedder loaded), its VmRSS (/proc/PID/status) read
SETTLE_S after its READY=1 on a NOTIFY_SOCKET (what systemd waits for); the median of RUNS starts
on the same data (the first start, which makes the identity and the stores, is not counted).
Every Python here runs from compiled bytecode, as a node does (the image's build compiles it:
node/image/build.py): the first start writes it under the run's own PYTHONPYCACHEPREFIX, even
where the environment says PYTHONDONTWRITEBYTECODE (compiling the sources at every start costs
~0.5 MiB more).
With the gateway (HTTP on, the default) and without (`--http off`). Baselines, same run: a bare
`python -c 'import time; time.sleep(60)'`, and what parts of the gateway's stack add to a Python
process that imported the daemon (FastAPI and uvicorn as the daemon imports them; what uvicorn
imports for its command line and supervisors; prometheus_client), and apsw's resident library
in the node, which the row names when the goal is not met. Goal: at most 60 MiB (a Pi Zero 2 W
has 512 MB).
"""

from __future__ import annotations

import os
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


def mapped_mib(pid: int, part: str) -> float:
    """The resident part of the files mapped from a path containing `part` (/proc/PID/smaps)."""
    kib, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if "-" in words[0] and not words[0].endswith(":"):  # a mapping's header line
            inside = len(words) > 5 and part in words[5]
        elif inside and words[0] == "Rss:":
            kib += int(words[1])
    return kib / 1024.0


def _bytecode_env(pycache: Path) -> dict[str, str]:
    """Python reads (and at its first run writes) compiled bytecode under `pycache`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return dict(env, PYTHONPYCACHEPREFIX=str(pycache))


def _node_rss(
    data: Path, broker_url: str, http: str, sock_path: Path, pycache: Path
) -> tuple[float, float]:
    """The node's VmRSS, and of it apsw's (mapped where this Python's sqlite3 cannot load
    sqlite-vec: node/agents/db.py), in MiB."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(60)
        # Empty: Python writes bytecode (the variable counts only when non-empty).
        env = {"NOTIFY_SOCKET": str(sock_path), "PYTHONDONTWRITEBYTECODE": ""}
        proc = start_up(data, broker_url, http, PYTHONPYCACHEPREFIX=str(pycache), **env)
        try:
            while "READY=1" not in sock.recv(4096).decode().split("\n"):
                pass
            time.sleep(SETTLE_S)
            return rss_mib(proc.pid), mapped_mib(proc.pid, "/apsw/")
        finally:
            stop(proc)
            sock_path.unlink(missing_ok=True)


def _python_rss(code: str, pycache: Path) -> float:
    """RSS of a Python process once it has run `code` and said so (it then sleeps)."""
    script = f"{code}\nimport sys, time\nprint({_MARK!r}, flush=True)\ntime.sleep(60)"
    env = _bytecode_env(pycache)
    cmd = [sys.executable, "-c", script]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != _MARK:
            raise RuntimeError(f"the baseline process did not start: {code!r}")
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _nodes_rss(work: Path, pycache: Path) -> dict[str, list[tuple[float, float]]]:
    """RUNS figures per gateway setting (127.0.0.1:0: on, off), each on its own data."""
    broker = Mosquitto(work / "mosq").start()
    try:
        figures: dict[str, list[tuple[float, float]]] = {"127.0.0.1:0": [], "off": []}
        for http, runs in figures.items():
            data = work / f"data-{http.replace(':', '_')}"
            sock = work / "n.sock"
            _node_rss(data, broker.url, http, sock, pycache)  # makes the identity, the bytecode
            runs += [_node_rss(data, broker.url, http, sock, pycache) for _ in range(RUNS)]
        return figures
    finally:
        broker.stop()


def _baselines(pycache: Path) -> dict[str, float]:
    """Bare Python, and what parts of the gateway's stack add to a Python that imported the
    daemon, each the median of RUNS processes (MiB)."""

    def median(code: str) -> float:
        return statistics.median(_python_rss(code, pycache) for _ in range(RUNS))

    daemon = "import gibsey.node.daemon"
    core = median(daemon)
    return {
        "bare": median("pass"),
        # The web framework as the daemon imports it (fastapi_lean: its models built at first use).
        "web": median(f"{daemon}; from gibsey.node.gateway import fastapi_lean; import uvicorn")
        - core,
        # What uvicorn's package imports for its command line and its reload/worker supervisors,
        # which a server embedded in the node never runs.
        "cli": median(f"{daemon}; import click, multiprocessing.connection") - core,
        "prometheus": median(f"{daemon}; import prometheus_client") - core,
    }


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-footprint-") as tmp:
        work = Path(tmp)
        pycache = work / "pycache"
        figures = _nodes_rss(work, pycache)
        base = _baselines(pycache)
    on = statistics.median(rss for rss, _ in figures["127.0.0.1:0"])
    apsw = statistics.median(apsw for _, apsw in figures["127.0.0.1:0"])
    common = (
        f"median of {RUNS} starts, VmRSS {SETTLE_S:g} s after READY=1, from compiled bytecode; "
        "baseline: bare python"
    )
    stops = (
        f"; what is left above the goal is third-party code the gateway needs loaded: FastAPI and "
        f"uvicorn add {base['web']:.1f} MiB to a Python that imported the daemon, of which "
        f"{base['cli']:.1f} MiB is what uvicorn's package imports for its CLI and supervisors "
        "(click, multiprocessing; no uvicorn API avoids them) and "
        f"{base['prometheus']:.1f} MiB prometheus_client (/metrics); apsw's library holds "
        f"{apsw:.1f} MiB here, mapped only because this Python's sqlite3 cannot load sqlite-vec "
        "(a Debian/Raspberry Pi OS Python's can: agents.db then opens through the stdlib)"
        if on > GOAL_MIB
        else ""
    )
    return [
        Row(
            "daemon RSS, model not loaded, gateway on",
            on,
            base["bare"],
            "MiB",
            limit=("<=", GOAL_MIB),
            note=f"{common}; GraphQL, NumPy, amqtt, zmq, rich, pydantic.v1 load only when used, "
            f"FastAPI's OpenAPI models are built at the first /openapi.json{stops}",
        ),
        Row(
            "daemon RSS, model not loaded, gateway off (--http off)",
            statistics.median(rss for rss, _ in figures["off"]),
            base["bare"],
            "MiB",
            limit=("<=", GOAL_MIB),
            note=common,
        ),
    ]
