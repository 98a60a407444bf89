"""A `gibsey up` process for a benchmark: start it, wait for a file it writes, stop it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def open_rotation_throttle(data: Path) -> None:
    """A benchmark drives one actor thousands of times a second: open the safety inverter's
    rotation throttle in the node's gibsey.toml, or rituals would be refused, not measured."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "gibsey.toml").write_text("[agent]\nrotations_per_second = 1000000.0\n")


def start_up(data: Path, broker_url: str, http: str = "off", **env: str) -> subprocess.Popen[bytes]:
    """`gibsey up` on `data` against `broker_url`, quiet, without Home Assistant discovery."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gibsey",
            "up",
            "--data",
            str(data),
            "--broker",
            broker_url,
            "--http",
            http,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, GIBSEY_DISCOVERY_PREFIX="", **env),
    )


def wait_for_file(proc: subprocess.Popen[bytes], path: Path, timeout: float, what: str) -> None:
    """Wait until the node writes `path`; kill it and raise if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"{what} did not start for the benchmark")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it has not stopped within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
