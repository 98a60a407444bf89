"""One `gibsey up` per data directory (core/datalock.py): a second start on a running
node's data is refused in one line naming the first, and leaves the first alone (no false death
on its record, its run record its own, still serving); the lock goes with its holder, however it
ends, so the next start (systemd's restart after a kill -9) takes it at once. A `--data` that is
a file is refused in one line by every command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gibsey.harness.nodeproc import spawn_up, wait_for_file
from gibsey.harness.waiting import stop_process
from gibsey.node.watchdog.rebirth import DEATHS_FILE, RUN_FILE
from tests.brokers import Mosquitto


def _up(data: Path, mosquitto: Mosquitto, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GIBSEY_DISCOVERY_PREFIX="")
    return spawn_up(data, mosquitto.url, "off", env=env, log=log)


def _started(proc: subprocess.Popen[bytes], data: Path) -> None:
    wait_for_file(proc, data / RUN_FILE, 60, "gibsey up")


def test_a_second_node_on_the_same_data_is_refused_and_the_first_is_left_alone(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    data = tmp_path / "node"
    first = _up(data, mosquitto, tmp_path / "first.log")
    try:
        _started(first, data)
        second = _up(data, mosquitto, tmp_path / "second.log")
        assert second.wait(timeout=60) == 1
        said = (tmp_path / "second.log").read_text().strip().splitlines()
        assert said == [
            f"gibsey up: a node is already running on {data} (pid {first.pid}): stop it first, "
            "or give this one a data directory of its own (--data DIR)"
        ]
        assert first.poll() is None
        assert json.loads((data / RUN_FILE).read_text())["pid"] == first.pid
        assert not (data / DEATHS_FILE).exists()  # nobody recorded the running node as dead
    finally:
        stop_process(first, timeout_s=15)
    assert first.returncode == 0
    assert "died" not in (tmp_path / "first.log").read_text()


def test_the_lock_goes_with_a_killed_node(tmp_path: Path, mosquitto: Mosquitto) -> None:
    data = tmp_path / "node"
    first = _up(data, mosquitto, tmp_path / "first.log")
    try:
        _started(first, data)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        (data / RUN_FILE).unlink()  # the next start's own record is what is waited for
        again = _up(data, mosquitto, tmp_path / "again.log")
        try:
            _started(again, data)
            assert json.loads((data / RUN_FILE).read_text())["pid"] == again.pid
        finally:
            stop_process(again, timeout_s=15)
        assert again.returncode == 0
    finally:
        stop_process(first, timeout_s=15)


def test_a_data_path_that_is_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a node\n")
    for data, words in ((afile, ["ledger", "balance"]), (afile / "deeper", ["up"])):
        done = subprocess.run(
            [sys.executable, "-m", "gibsey", "--data", str(data), *words],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"gibsey {words[0]}: the data directory {data} cannot be made: {afile} is a file; "
            "--data or GIBSEY_DATA names a directory (a new node makes it)"
        ]
    assert afile.read_text() == "not a node\n"


def test_a_missing_config_file_named_by_gibsey_config_is_said_at_start(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Tried (an outside tester): GIBSEY_CONFIG naming a file that is not there ran the node on
    the defaults without a word. Allowed (the image names its file whether or not the card
    brought one), but must be said: one warning line at start naming the file."""
    data, missing = tmp_path / "node", tmp_path / "nope.toml"
    env = dict(os.environ, GIBSEY_DISCOVERY_PREFIX="", GIBSEY_CONFIG=str(missing))
    proc = spawn_up(data, mosquitto.url, "off", env=env, log=tmp_path / "up.log")
    try:
        _started(proc, data)
    finally:
        stop_process(proc, timeout_s=15)
    said = (tmp_path / "up.log").read_text()
    assert (
        f"GIBSEY_CONFIG names {missing}, which does not exist: every setting is its default" in said
    )
