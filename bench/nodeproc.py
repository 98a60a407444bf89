"""A `gibsey up` process for a benchmark: start it, wait for a file it writes, stop it.

The process control is the harness's (gibsey.harness.nodeproc and .waiting, shared with the
rehearsal's nodes); a benchmark's node differs only in being quiet, without Home Assistant
discovery, and with its rotation throttle open.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gibsey.harness.nodeproc import spawn_up
from gibsey.harness.nodeproc import wait_for_file as wait_for_file  # re-exported for the benches
from gibsey.harness.waiting import stop_process


def open_rotation_throttle(data: Path) -> None:
    """A benchmark drives one actor thousands of times a second: open the safety inverter's
    rotation throttle and the node's bounds on visitors' inputs in the node's gibsey.toml, or
    rituals would be refused, not measured."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "gibsey.toml").write_text(
        "[node]\nvisitor_inputs_per_second = 1000000.0\n"
        "visitor_inputs_per_source_per_second = 1000000.0\n"
        "[agent]\nrotations_per_second = 1000000.0\n"
    )


def start_up(
    data: Path, broker_url: str, http: str = "off", python: str = sys.executable, **env: str
) -> subprocess.Popen[bytes]:
    """`gibsey up` on `data` against `broker_url`, quiet, without Home Assistant discovery, run
    by `python`."""
    env = dict(os.environ, GIBSEY_DISCOVERY_PREFIX="", **env)
    return spawn_up(data, broker_url, http, env=env, python=python)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it has not stopped within `timeout` seconds."""
    stop_process(proc, timeout_s=timeout_s)
