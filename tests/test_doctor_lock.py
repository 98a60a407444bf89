"""Which process runs a data directory: the one holding its lock (core/datalock.py
`holder`, read from the kernel's table of locks without taking the lock), and `gibsey doctor`
asks the same (node/doctor.py `_node_pid`). Real processes hold real locks; each waits for its
child's "holding" line on a pipe, so no test hopes a sleep was long enough."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gibsey.core import datalock
from gibsey.core.datalock import LOCK_FILE, holder
from gibsey.node import doctor
from gibsey.node.watchdog.rebirth import RUN_FILE, boot_id

# The child takes a lock on the lock file of the data directory argv[1] as argv[2] says, says so
# on stdout, and keeps it until the test closes its stdin (or kills it).
HOLD = """
import fcntl, os, sys
from pathlib import Path
from gibsey.core.datalock import LOCK_FILE, DataDirLock
data, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "node":
    DataDirLock(data).acquire()
else:
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    if kind == "shared":
        fcntl.flock(fd, fcntl.LOCK_SH)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # a POSIX lock
print("holding", flush=True)
sys.stdin.read()
"""


@contextmanager
def _holding(data: Path, kind: str = "node") -> Iterator[subprocess.Popen[str]]:
    """A child process holding `data`'s lock (as `gibsey up` does, for "node"), from its
    "holding" line until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "holding\n"
        yield child
    finally:
        child.kill()
        child.communicate(timeout=30)


def _tmpfs_dir() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as where:
        yield Path(where) / "data"


@pytest.fixture(params=["disk", "tmpfs"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A data directory on the disk (a block device: fe:00 here) and on tmpfs (an anonymous
    device 00:1b or so, whose minor the kernel prints in hex)."""
    if request.param == "disk":
        yield tmp_path / "data"
    else:
        yield from _tmpfs_dir()


def test_the_holder_is_the_process_holding_the_lock(data: Path) -> None:
    with _holding(data) as child:
        assert child.pid != os.getpid()
        assert holder(data) == child.pid
        assert holder(data) == child.pid  # asking took nothing: the child still holds it


def test_a_killed_holder_holds_nothing(tmp_path: Path) -> None:
    """kill -9 leaves the dead node's pid in the lock file; the kernel let go of its lock."""
    with _holding(tmp_path) as child:
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert (tmp_path / LOCK_FILE).read_text() == f"{child.pid}\n"
        assert holder(tmp_path) is None


def _never(*args: object) -> None:
    raise AssertionError("holder() took a lock: a node starting meanwhile would be refused")


def test_a_stale_pid_in_an_unlocked_file_is_no_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run.json-style false positive: a pid written and alive (this test's own), no lock;
    told without taking the lock (which is free here, so taking it would have worked)."""
    monkeypatch.setattr(fcntl, "flock", _never)
    monkeypatch.setattr(fcntl, "lockf", _never)
    assert holder(tmp_path) is None  # no lock file at all, and none made
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()}\n")
    assert holder(tmp_path) is None


def test_doctor_names_the_holder_not_run_json(tmp_path: Path) -> None:
    """run.json of this boot saying a run goes on, its pid alive (this test's: a pid taken by
    another process after a kill -9), is not the node; the process holding the lock is."""
    run = {"pid": os.getpid(), "clean": False, "boot": boot_id(), "started": 0.0}
    (tmp_path / RUN_FILE).write_text(json.dumps(run))
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()}\n")
    assert doctor._node_pid(tmp_path) is None
    with _holding(tmp_path) as child:
        assert doctor._node_pid(tmp_path) == child.pid == holder(tmp_path)
    assert doctor._node_pid(tmp_path) is None


@pytest.mark.parametrize("kind", ["shared", "posix"])
def test_only_an_exclusive_flock_is_a_node(tmp_path: Path, kind: str) -> None:
    """A shared flock or a POSIX lock on the file is someone else's, not DataDirLock's."""
    with _holding(tmp_path, kind) as child:
        assert str(child.pid) in datalock.LOCKS_TABLE.read_text()  # listed, and not counted
        assert holder(tmp_path) is None


def _table_row(path: Path, pid: int, access: str = "WRITE") -> str:
    """A row of /proc/locks for a flock on `path`, in the kernel's format."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return f"1: FLOCK  ADVISORY  {access} {pid} {dev} 0 EOF\n"


def test_a_listed_lock_without_its_pid_falls_back_to_the_written_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that lists the lock of a process this pid namespace cannot see shows pid 0 (this
    one leaves such a lock out, so the table is written here): the pid in the file answers, but
    only while the lock is listed."""
    lock = tmp_path / LOCK_FILE
    lock.write_text("4242\n")
    table = tmp_path / "locks"
    monkeypatch.setattr(datalock, "LOCKS_TABLE", table)
    table.write_text(_table_row(lock, 0))
    assert holder(tmp_path) == 4242
    table.write_text(_table_row(lock, 0, "READ") + _table_row(table, 0))  # none on it: stale
    assert holder(tmp_path) is None
