"""What a node without a loaded model holds in memory: the parts that do not run, or have not been
used yet, are not imported (numpy with the first memory, strawberry with the first /graphql
request, amqtt only as the embedded broker, zmq only with the mesh, llama.cpp and onnxruntime in
the worker or the embedder, rich only on a terminal, difflib with the first diff,
prometheus_client with the first scrape of /metrics, uvicorn's command line never), FastAPI's
OpenAPI models are built at the first /openapi.json, and FastAPI does not import pydantic.v1;
`gibsey bench footprint` measures the RSS this saves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gibsey.harness import card_python
from gibsey.harness.waiting import stop_process
from tests.brokers import Mosquitto

# Modules a node that nobody has asked anything does not load (the RSS row); zmq is the
# mesh's, which runs only with a [mesh] section.
NOT_LOADED = (
    *("numpy", "llama_cpp", "onnxruntime", "tokenizers"),
    *("strawberry", "graphql", "amqtt", "zmq"),
    *("pydantic.v1", "rich", "difflib"),
    "prometheus_client",  # at the first scrape of /metrics
    # uvicorn's command line and its reload and worker supervisors (node/gateway/uvicorn_lean.py)
    *("uvicorn.main", "click", "multiprocessing"),
)
# The shared objects of those that have any: what /proc/PID/maps of the real process shows.
NOT_MAPPED = ("/numpy/", "/llama_cpp/", "/onnxruntime/", "/tokenizers/", "/zmq/", "/pyzmq.libs/")

_BUILD_NODE = """
import json, sys
from pathlib import Path
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
config = GibseyConfig()
config.gateway.listen_on("127.0.0.1:0")  # the gateway attached, as `gibsey up` has it
node = Node(Path(sys.argv[1]), config)
assert node.parts.agents is not None and node.parts.gateway is not None
from fastapi.openapi.models import OpenAPI
loaded = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"loaded": loaded, "openapi_models_built": OpenAPI.__pydantic_complete__}))
"""


def test_a_node_built_with_agents_and_gateway_has_not_imported_what_it_has_not_used(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BUILD_NODE, str(tmp_path / "data"), json.dumps(NOT_LOADED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    built = json.loads(out.stdout.strip().splitlines()[-1])
    assert built == {"loaded": [], "openapi_models_built": False}


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gibsey up exited before READY=1"
        sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            if "READY=1" in sock.recv(4096).decode().split("\n"):
                return
        except TimeoutError:
            continue
    raise AssertionError(f"no READY=1 from gibsey up in {timeout_s} s")


def test_a_running_node_maps_no_numpy_nor_model_runtime_until_asked(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    env = dict(os.environ, GIBSEY_DATA=str(tmp_path / "data"), GIBSEY_DISCOVERY_PREFIX="")
    sock_path = tmp_path / "notify.sock"
    env["NOTIFY_SOCKET"] = str(sock_path)
    # -X importtime: every module the process imports, named on its stderr (here a file, as
    # under systemd: no terminal), beside its log.
    cmd = [sys.executable, "-X", "importtime", "-m", "gibsey", "up", "--broker", mosquitto.url]
    log_path = tmp_path / "up.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, open(log_path, "wb") as log:
        sock.bind(str(sock_path))
        proc = subprocess.Popen(
            [*cmd, "--http", "127.0.0.1:0"], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            _wait_ready(sock, proc, 60)
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            stop_process(proc, timeout_s=15)
    files = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    assert any("/sqlite_vec/" in f for f in files)  # the agents' database is open
    assert sorted(f for f in files if any(name in f for name in NOT_MAPPED)) == []
    lines = log_path.read_text().splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert sorted(imported & set(NOT_LOADED)) == []
    # The log without a terminal: one plain line per record, however long (journald's lines).
    started = [line for line in lines if " started; data in " in line]
    assert len(started) == 1
    assert started[0].endswith(f"data in {tmp_path / 'data'}; Ctrl-C stops it")


def test_on_the_cards_python_a_running_node_opens_its_agents_without_apsw(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The card's interpreter (Debian's python3) loads sqlite-vec through its own sqlite3: a node
    there maps sqlite-vec but not apsw's second SQLite (2.6 MiB of `gibsey bench footprint`'s card
    row)."""
    why = card_python.unavailable_reason()
    if why is not None:
        pytest.skip(why)
    python = card_python.card_venv(tmp_path / "card-venv")
    env = dict(os.environ, GIBSEY_DATA=str(tmp_path / "data"), GIBSEY_DISCOVERY_PREFIX="")
    sock_path = tmp_path / "notify.sock"
    env["NOTIFY_SOCKET"] = str(sock_path)
    cmd = [str(python), "-m", "gibsey", "up", "--broker", mosquitto.url, "--http", "127.0.0.1:0"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(sock, proc, 60)
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            exe = os.readlink(f"/proc/{proc.pid}/exe")
        finally:
            stop_process(proc, timeout_s=15)
    assert os.path.realpath(exe) == os.path.realpath(card_python.CARD_PYTHON)
    files = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    assert any("/sqlite_vec/" in f for f in files)  # the agents' database is open, with vec0
    assert sorted(f for f in files if "/apsw/" in f) == []
