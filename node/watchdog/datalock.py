"""One `gibsey up` per data directory.

Two daemons on one data directory would each take the other for a dead run (run.json names a
pid that did not stop cleanly: a false death on the record and towards the crash-loop hearing),
take turns at the broker under the same client id (each connection drops the other's), and
count the starts twice. The daemon holds an exclusive `flock` on DATA/gibsey.lock for its whole
life; the kernel lets go of it when the process ends however it ends (kill -9, power cut), so a
restart under systemd never waits for a stale lock. The commands that work beside a running node
(`gibsey ledger ...`, `gibsey doctor`) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "gibsey.lock"


class AlreadyRunning(RuntimeError):
    """Another process holds the data directory."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"a node is already running on {data_dir} ({who}): stop it first, or give this one "
            "a data directory of its own (--data DIR)"
        )
        self.pid = pid


class DataDirLock:
    """Held from `acquire` until `release` or the process's end."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock, or raise AlreadyRunning; an OSError of the disk (full, read-only) is
        raised as it is, for the caller's one-line refusal."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise AlreadyRunning(self.data_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # The holder's pid, for the message a second start gives; not what the lock rests on.
        # A write the disk refuses is not a reason to refuse the start: the lock is held.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor lets go of the flock
            self._fd = None


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
