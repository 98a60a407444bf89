"""Files a card emptied (0 bytes: a write cut short by a power cut leaves one on ext4): said at the
start, one line each naming the file and what went with it, never taken for the defaults unsaid.

Tried (an outside tester): gibsey.toml at 0 bytes ran the node on the whole default configuration
(ports 1883/8080, its mesh and operators gone) with no word; agents/agents.db and deaths.json at 0
bytes were used as empty with no word; `lamport` at 0 bytes was said, but the clock started again
from 0, below the events the node had sent, though its ledger held far higher values."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.harness.nodeproc import wait_for_file
from gibsey.ledger.ledger import Ledger
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from tests.test_damaged_databases import a_stopped_node

__all__ = ["a_stopped_node"]  # a fixture, used by name

EMPTIED = {
    "gibsey.toml": "every setting is its default",
    "agents/agents.db": "the agents' memories of their visitors",
    "deaths.json": "the record of this node's recent deaths is lost",
    "lamport": "the Lamport clock resumes past",
}


def up_and_stop(data: Path) -> str:
    """`gibsey up` on `data` until it has started, then Ctrl-C: its stderr. No broker there and
    no gateway, so an emptied gibsey.toml's default ports are never taken."""
    (data / "run.json").unlink(missing_ok=True)  # written again once the node has started
    env = dict(os.environ, GIBSEY_BROKER="mqtt://127.0.0.1:9", GIBSEY_HTTP="off")
    cmd = [sys.executable, "-m", "gibsey.cli", "--data", str(data), "up", "--http", "off"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_file(proc, data / "run.json", 60, "gibsey up")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


def test_emptied_files_are_said_at_the_start_and_the_clock_resumes_past_the_ledger(
    a_stopped_node: Path, tmp_path: Path
) -> None:
    """A node's data with 3 entries signed, then gibsey.toml, agents.db, deaths.json and lamport
    emptied. Must hold: one warning line for each, naming it and what went with it; the clock
    resumes past the ledger's highest Lamport (said in its line); `gibsey doctor` warns of the
    empty gibsey.toml too."""
    data = tmp_path / "node"
    subprocess.run(["cp", "-a", str(a_stopped_node), str(data)], check=True)
    ledger = Ledger.open(data)
    for n in range(3):
        ledger.mint(f"visitor-{n}", 1, "0:0")
    top = ledger.store.max_lamport
    ledger.close()
    for name in EMPTIED:
        (data / name).write_bytes(b"")
    err = up_and_stop(data)
    assert "Traceback" not in err
    for name, lost in EMPTIED.items():
        said = [line for line in err.splitlines() if f"{data / name} is empty" in line]
        assert len(said) == 1, (name, err)
        assert "WARNING" in said[0] and lost in said[0], said[0]
    [clock] = [line for line in err.splitlines() if f"{data / 'lamport'} is empty" in line]
    assert f"resumes past {top}, the highest Lamport in this node's ledger" in clock
    assert int((data / "lamport").read_text()) > top  # the ceiling written past it
    doctor = subprocess.run(
        [sys.executable, "-m", "gibsey.cli", "--data", str(data), "doctor"],
        env=dict(os.environ, GIBSEY_BROKER="mqtt://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    [config] = [line for line in doctor.stdout.splitlines() if line.startswith("warn  config")]
    assert f"{data / 'gibsey.toml'} is empty (0 bytes), so every setting is its default" in config


def test_a_lost_clock_with_no_ledger_entry_starts_from_0_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No entry to resume past (a node that never signed one): the clock starts from 0, and the
    one line says why."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "lamport").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        node = Node(data, GibseyConfig())
    try:
        assert node.clock.value == 0
        [said] = [r.getMessage() for r in caplog.records if "lamport is empty" in r.getMessage()]
        assert "starts again from 0 (its ledger holds no entry to resume past)" in said
    finally:
        for close in reversed(node._closers):
            close()
