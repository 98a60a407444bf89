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
process that imported the daemon (FastAPI and uvicorn as the daemon imports them: uvicorn without
its command line and supervisors, node/gateway/uvicorn_lean.py), and apsw's resident library
in the node, which the row names when the goal is not met. Goal: at most 60 MiB (a Pi Zero 2 W
has 512 MB).
And with the gateway on, run by the card's interpreter: Debian's own python3, which the image's
venv is made from (harness/card_python.py), against a bare process of that interpreter. Its
sqlite3 loads sqlite-vec, so agents.db opens without apsw, as on a card. Once without a mesh,
once with one peer configured (as a gallery's node: the mesh and ZeroMQ loaded).
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

from nacl.signing import SigningKey

from gibsey.bench.nodeproc import start_up, stop
from gibsey.bench.report import Row
from gibsey.harness import card_python
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
    data: Path, broker_url: str, http: str, sock_path: Path, pycache: Path, python: str
) -> tuple[float, float]:
    """The node's VmRSS, and of it apsw's (mapped where this Python's sqlite3 cannot load
    sqlite-vec: node/agents/db.py), in MiB."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(60)
        # Empty: Python writes bytecode (the variable counts only when non-empty).
        env = {"NOTIFY_SOCKET": str(sock_path), "PYTHONDONTWRITEBYTECODE": ""}
        proc = start_up(data, broker_url, http, python, PYTHONPYCACHEPREFIX=str(pycache), **env)
        try:
            while "READY=1" not in sock.recv(4096).decode().split("\n"):
                pass
            time.sleep(SETTLE_S)
            return rss_mib(proc.pid), mapped_mib(proc.pid, "/apsw/")
        finally:
            stop(proc)
            sock_path.unlink(missing_ok=True)


def _python_rss(code: str, pycache: Path, python: str = sys.executable) -> float:
    """RSS of a Python process once it has run `code` and said so (it then sleeps)."""
    script = f"{code}\nimport sys, time\nprint({_MARK!r}, flush=True)\ntime.sleep(60)"
    env = _bytecode_env(pycache)
    cmd = [python, "-c", script]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != _MARK:
            raise RuntimeError(f"the baseline process did not start: {code!r}")
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


# The node runs: (gateway, interpreter, gibsey.toml), one figure list each.
_ON, _OFF, _CARD, _CARD_MESH = "127.0.0.1:0", "off", "card", "card+mesh"
# A gallery's node gossips its ledger: one peer (a real key: the configuration refuses 64 hex
# digits that are no key; nobody answers on the discard port) loads the mesh, and ZeroMQ.
_PEER = SigningKey(bytes([7]) * 32).verify_key.encode().hex()
MESH_TOML = f'[mesh]\nlisten = "tcp://127.0.0.1:0"\npeers = ["{_PEER}@tcp://127.0.0.1:9"]\n'


def _nodes_rss(work: Path, pycache: Path, card: str | None) -> dict[str, list[tuple[float, float]]]:
    """RUNS figures per run (gateway on, off; on under the card's interpreter when there is
    one, without and with a mesh), each on its own data."""
    runs = {_ON: (_ON, sys.executable, ""), _OFF: (_OFF, sys.executable, "")}
    if card is not None:
        runs[_CARD] = (_ON, card, "")
        runs[_CARD_MESH] = (_ON, card, MESH_TOML)
    broker = Mosquitto(work / "mosq").start()
    try:
        figures: dict[str, list[tuple[float, float]]] = {}
        for key, (http, python, toml) in runs.items():
            name = key.replace(":", "_")
            data, args = work / f"data-{name}", (http, work / "n.sock", pycache / name, python)
            data.mkdir(parents=True)
            (data / "gibsey.toml").write_text(toml)
            _node_rss(data, broker.url, *args)  # makes the identity, the stores, the bytecode
            figures[key] = [_node_rss(data, broker.url, *args) for _ in range(RUNS)]
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
        # The web framework as the daemon imports it (fastapi_lean: its models built at first
        # use; uvicorn_lean: no command line, no supervisors).
        "web": median(f"{daemon}; from gibsey.node.gateway import fastapi_lean, uvicorn_lean")
        - core,
    }


def _card_rows(
    figures: dict[str, list[tuple[float, float]]], bare: float | None, why: str
) -> list[Row]:
    names = {
        _CARD: "daemon RSS, model not loaded, gateway on, on the card's python3 (Debian's)",
        _CARD_MESH: "the same with the mesh on (one peer configured: ZeroMQ loaded)",
    }
    if bare is None:
        unmeasured = f"not measured: {why}"
        return [Row(n, float("nan"), None, "MiB", note=unmeasured) for n in names.values()]
    rows = []
    for key, name in names.items():
        card = figures[key]
        note = (
            f"median of {RUNS} starts as above, run by {card_python.CARD_PYTHON}, the "
            "interpreter the image's venv is made from: agents.db opens through its sqlite3 "
            f"(apsw's library mapped: {statistics.median(a for _, a in card):.1f} MiB); "
            f"baseline: bare {card_python.CARD_PYTHON}"
        )
        rss = statistics.median(r for r, _ in card)
        rows.append(Row(name, rss, bare, "MiB", limit=("<=", GOAL_MIB), note=note))
    return rows


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-footprint-") as tmp:
        work = Path(tmp)
        pycache = work / "pycache"
        why = card_python.unavailable_reason()
        card = None if why else str(card_python.card_venv(work / "card-venv"))
        figures = _nodes_rss(work, pycache, card)
        base = _baselines(pycache)
        card_bare = None
        if card is not None:
            runs = (_python_rss("pass", pycache / "card", card) for _ in range(RUNS))
            card_bare = statistics.median(runs)
    on = statistics.median(rss for rss, _ in figures[_ON])
    apsw = statistics.median(apsw for _, apsw in figures[_ON])
    common = (
        f"median of {RUNS} starts, VmRSS {SETTLE_S:g} s after READY=1, from compiled bytecode; "
        "baseline: bare python"
    )
    stops = (
        f"; what is left above the goal is third-party code the gateway needs loaded: FastAPI and "
        f"uvicorn add {base['web']:.1f} MiB to a Python that imported the daemon; apsw's "
        "library holds "
        f"{apsw:.1f} MiB here, mapped only because this Python's sqlite3 cannot load sqlite-vec "
        "(a Debian/Raspberry Pi OS Python's can: agents.db then opens through the stdlib, the "
        "card's row)"
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
            note=f"{common}; GraphQL, NumPy, amqtt, zmq, rich, pydantic.v1, "
            "prometheus_client (the first scrape of /metrics) load only when used, uvicorn's "
            "command line and supervisors (click, multiprocessing) never, "
            f"FastAPI's OpenAPI models are built at the first /openapi.json{stops}",
        ),
        Row(
            "daemon RSS, model not loaded, gateway off (--http off)",
            statistics.median(rss for rss, _ in figures[_OFF]),
            base["bare"],
            "MiB",
            limit=("<=", GOAL_MIB),
            note=common,
        ),
        *_card_rows(figures, card_bare, why or ""),
    ]
