"""`gibsey bench rebirth`: how fast the node is serving again, from a cold start and after kill -9.

- start -> READY on this machine: `gibsey up` against Mosquitto, timed from the process start to
  its READY=1 datagram on a NOTIFY_SOCKET (what systemd waits for); baseline: a Python process
  that sends READY=1 at once (the interpreter's own start).
- kill -9 -> READY under systemd: inside the nspawn test root (gibsey.harness.testroot) the node's
  unit is killed with SIGKILL and timed until systemd reports it active (READY=1) with a new
  main PID; this includes the unit's RestartSec (200 ms). Baseline: a trivial Type=notify unit
  with the same RestartSec, killed the same way.

Goal: each under 2 s (the model load is lazy and not part of it). Medians over RUNS.
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

from gibsey.bench.report import Row
from gibsey.harness import testroot
from gibsey.harness.mosquitto import Mosquitto

RUNS = 5
GOAL_S = 2.0
BASELINE_UNIT = """\
[Unit]
StartLimitIntervalSec=0
[Service]
Type=notify
NotifyAccess=all
Restart=on-failure
RestartSec=200ms
ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep infinity'
"""


def _time_to_ready(cmd: list[str], env: dict[str, str], sock_path: Path, timeout_s: float) -> float:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(timeout_s)
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env={**env, "NOTIFY_SOCKET": str(sock_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = started + timeout_s
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                msg = sock.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    return time.monotonic() - started
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            sock_path.unlink(missing_ok=True)


def start_to_ready(runs: int = RUNS) -> list[Row]:
    gibsey = Path(sys.executable).with_name("gibsey")
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-rebirth-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosq").start()
        try:
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            env["GIBSEY_DATA"] = str(work / "data")
            node = [str(gibsey), "up", "--broker", broker.url]
            # The first start makes the identity and the stores; the figure is a later start.
            _time_to_ready(node, env, work / "n.sock", 60)
            figures = [_time_to_ready(node, env, work / "n.sock", 60) for _ in range(runs)]
            bare = [sys.executable, "-c", _BARE_READY]
            baselines = [_time_to_ready(bare, env, work / "b.sock", 30) for _ in range(runs)]
        finally:
            broker.stop()
    return [
        Row(
            "start -> READY (gibsey up, this machine)",
            statistics.median(figures),
            statistics.median(baselines),
            "s",
            limit=("<=", GOAL_S),
            note=f"median of {runs}; baseline: python sending READY=1 at once",
        )
    ]


_BARE_READY = (
    "import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
    "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])"
)


def _kill_until_active(box: testroot.Container, unit: str, timeout_s: float = 30.0) -> float:
    def state() -> tuple[str, int]:
        s = box.show(unit, "ActiveState", "MainPID")
        return s.get("ActiveState", ""), int(s.get("MainPID", "0") or 0)

    box.wait_for(lambda: state()[0] == "active", timeout_s, f"{unit} active")
    old = state()[1]
    started = time.monotonic()
    done = box.systemctl("kill", "--signal=KILL", "--kill-whom=main", unit)
    if done.returncode != 0:
        raise RuntimeError(f"systemctl kill {unit}: {done.stderr.strip()}")
    box.wait_for(
        lambda: (s := state())[0] == "active" and s[1] not in (0, old),
        timeout_s,
        f"{unit} to be READY again after kill -9",
    )
    return time.monotonic() - started


def kill_to_ready(runs: int = RUNS) -> list[Row]:
    name = "kill -9 -> READY under systemd (nspawn)"
    reason = testroot.unavailable_reason()
    if reason is not None:
        return [Row(name, float("nan"), None, "s", note=f"not measured: {reason}")]
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-nspawn-") as tmp:
        try:
            root = testroot.ensure_root()
            box = testroot.Container(root, Path(tmp), name="gibsey-bench")
            box.start()
        except testroot.Unavailable as exc:
            first = str(exc).splitlines()[0]
            return [Row(name, float("nan"), None, "s", note=f"not measured: {first}")]
        try:
            made = box.exec(
                "sh",
                "-c",
                "cat > /run/systemd/system/bench-baseline.service && systemctl daemon-reload "
                "&& systemctl start bench-baseline.service",
                input=BASELINE_UNIT,
            )
            if made.returncode != 0:
                raise RuntimeError(f"baseline unit: {made.stderr.strip()}")
            figures = [_kill_until_active(box, "gibsey-node.service") for _ in range(runs)]
            baselines = [_kill_until_active(box, "bench-baseline.service") for _ in range(runs)]
        finally:
            box.stop()
    return [
        Row(
            name,
            statistics.median(figures),
            statistics.median(baselines),
            "s",
            limit=("<=", GOAL_S),
            note=f"median of {runs}, incl. RestartSec; baseline: a trivial notify unit",
        )
    ]


def run() -> list[Row]:
    return [*start_to_ready(), *kill_to_ready()]
