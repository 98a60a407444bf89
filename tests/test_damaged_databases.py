"""A database the card damaged, and files given on the command line that cannot be used: one
line each, naming the file and what to do, never a traceback; nothing written.

Tried from outside (a technician's SD card): the ledger's header overwritten, a page in its
middle damaged (found only when a later read reaches it), a directory where the ledger belongs;
`gibsey vm asm -o` into a missing folder or onto a directory. Each ended in ~40 lines of Python
traceback, and the directory was reported as a failing card (EIO)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.harness.nodeproc import wait_for_file
from gibsey.harness.waiting import until
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import DB_FILENAME
from tests.conftest import RunningNode
from tests.test_cli_output import gibsey

PAGE = 4096  # SQLite's default page size, the ledger's


def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gibsey --data DATA ...` as a technician runs it, no broker there (nothing announced)."""
    done = gibsey(data, *args)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.fixture(scope="module")
def ledger_of_40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node's data directory whose ledger holds 40 mints (15 pages)."""
    data = tmp_path_factory.mktemp("node")
    ledger = Ledger.open(data)
    for i in range(40):
        ledger.mint(f"visitor-{i}", 1, "bench")
    ledger.close()
    return data


def damaged_copy(source: Path, where: Path, offset: int, junk: bytes) -> Path:
    data = where / "node"
    subprocess.run(["cp", "-a", str(source), str(data)], check=True)
    with open(data / DB_FILENAME, "r+b") as f:
        f.seek(offset)
        f.write(junk)
    return data


@pytest.mark.parametrize(
    ("offset", "junk"),
    [
        (0, b"NOTSQLITE"),  # the header: no database at all
        (5 * PAGE, b"\x0d" + b"\xff" * 7),  # a b-tree page read when the store opens
        (11 * PAGE, b"\x0d" + b"\xff" * 7),  # one read only by a later query
    ],
    ids=["header", "page-read-at-open", "page-read-later"],
)
def test_a_damaged_ledger_is_said_in_one_line(
    ledger_of_40: Path, tmp_path: Path, offset: int, junk: bytes
) -> None:
    data = damaged_copy(ledger_of_40, tmp_path, offset, junk)
    before = (data / DB_FILENAME).read_bytes()
    for command in (["ledger", "verify"], ["ledger", "show"], ["ledger", "mint", "ada", "1"]):
        done = run(data, *command)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("gibsey ledger: ")
        assert " is damaged: " in line and "restore it from a backup" in line
    assert (data / DB_FILENAME).read_bytes() == before  # nothing written to it


def test_a_node_will_not_start_on_a_damaged_ledger(ledger_of_40: Path, tmp_path: Path) -> None:
    data = damaged_copy(ledger_of_40, tmp_path, 0, b"NOTSQLITE")
    done = run(data, "up", "--http", "off")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"the ledger {data / DB_FILENAME} is damaged: file is not a database" in done.stderr


def test_a_directory_in_place_of_the_ledger_is_no_failing_card(tmp_path: Path) -> None:
    data = tmp_path / "node"
    Ledger.open(data).close()
    (data / DB_FILENAME).unlink()
    (data / DB_FILENAME).mkdir()
    done = run(data, "ledger", "verify")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"gibsey ledger: the ledger {data / DB_FILENAME} is a directory, not a database: "
        "move it away (nothing was written)"
    )


def test_a_file_argument_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "halt.gasm").write_text("    HALT\n")
    (tmp_path / "a-folder").mkdir()
    for out, why in (
        ("missing/halt.gbc", "No such file or directory"),
        ("a-folder", "Is a directory"),
    ):
        target = tmp_path / out
        done = run(tmp_path, "vm", "asm", str(tmp_path / "halt.gasm"), "-o", str(target))
        assert (done.returncode, done.stderr.strip()) == (1, f"gibsey vm: {target}: {why}")


async def test_a_story_sync_that_fails_alike_is_said_once(
    running_node: RunningNode, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged page the story's sync reads fails every round (once a second), alike: said
    once in the log and one alert, then again only when it fails otherwise or works again.
    The damage is the one stand-in: the sync raises what SQLite raises for it."""
    story = running_node.node.parts.story
    assert story is not None
    rounds: list[int] = []

    def damaged() -> int:
        rounds.append(1)
        raise sqlite3.DatabaseError("database disk image is malformed")

    caplog.set_level(logging.INFO, logger="gibsey.story")
    monkeypatch.setattr(story, "sync", damaged)
    await until(lambda: len(rounds) >= 3, 10, "three rounds of the story's sync")
    failed = [r for r in caplog.records if r.getMessage().startswith("story sync failed")]
    assert len(failed) == 1
    monkeypatch.undo()
    await until(
        lambda: any("story sync works again" in r.getMessage() for r in caplog.records),
        10,
        "the sync working again, said",
    )


# ---- the node's other databases ------------------------------------------------------------

# Each database besides the ledger, as `gibsey up` and `gibsey doctor` name it, and what a
# line about it must say goes with it when it is moved aside.
KEPT = {
    "opcodes.sqlite3": ("the opcode table", "must be loaded again"),
    "story.sqlite3": ("the story graph", "nothing is lost"),
    "agents/agents.db": ("the agents' database", "the agents' memories of their visitors"),
}


@pytest.fixture(scope="module")
def a_stopped_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory as `gibsey up` leaves it at a clean stop (Ctrl-C): every database made
    and checkpointed. No broker (the node's parts make their files all the same), no gateway."""
    data = tmp_path_factory.mktemp("node")
    env = dict(os.environ, GIBSEY_BROKER="mqtt://127.0.0.1:9")
    cmd = [sys.executable, "-m", "gibsey.cli", "--data", str(data), "up", "--http", "off"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_file(proc, data / "run.json", 60, "gibsey up")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    return data


def damage(source: Path, where: Path, name: str, how: str) -> Path:
    """A copy of the node's data with `name` damaged as a tester did: `truncate -s -4096`, or
    'garbage' over its 16-byte header."""
    data = where / "node"
    subprocess.run(["cp", "-a", str(source), str(data)], check=True)
    path = data / name
    if how == "truncated":
        os.truncate(path, path.stat().st_size - PAGE)
    else:
        with open(path, "r+b") as f:
            f.write(b"garbage garbage!")
    return data


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("agents/agents.db", "truncated"),
        ("agents/agents.db", "header"),
        ("opcodes.sqlite3", "truncated"),
        ("story.sqlite3", "header"),
    ],
)
def test_every_damaged_database_is_named_in_one_line_and_doctor_checks_it(
    a_stopped_node: Path, tmp_path: Path, name: str, how: str
) -> None:
    """Tried (an outside tester): agents.db truncated by a page, or its header overwritten,
    stopped `gibsey up` with a 30-line traceback (apsw.CorruptError, apsw.NotADBError); the
    opcode table's damage was "a database in DATA", unnamed; `gibsey doctor`, where that line
    sent the user, checked only the ledger. Must hold: `gibsey up` exits 2 with one line naming
    the file, what to do and what goes with it, writing nothing to it; `gibsey doctor` has a
    FAIL line naming it, and the same fix."""
    data = damage(a_stopped_node, tmp_path, name, how)
    path = data / name
    what, lost = KEPT[name]
    before = path.read_bytes()
    done = run(data, "up", "--http", "off")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("gibsey up: ")]
    assert line.startswith(f"gibsey up: {what} {path} is damaged: "), line
    aside = f"move it aside with its -wal and -shm files (`mkdir -p {path.parent}/damaged && mv "
    assert aside in line
    assert lost in line
    assert path.read_bytes() == before  # nothing written to it
    doctor = run(data, "doctor").stdout.splitlines()
    [at] = [i for i, x in enumerate(doctor) if x.startswith("FAIL  database ")]
    assert f"{what} {path} is damaged: " in doctor[at]
    assert doctor[at + 1].startswith("      fix: move it aside") and lost in doctor[at + 1]
    others = [x for x in doctor if x.startswith("ok    database ")]
    assert len(others) == len(KEPT) - 1  # the others checked, and found whole
    assert path.read_bytes() == before
