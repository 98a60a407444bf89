"""One `gibsey up` per data directory.

Two daemons on one data directory would each take the other for a dead run (run.json names a
pid that did not stop cleanly: a false death on the record and towards the crash-loop hearing),
take turns at the broker under the same client id (each connection drops the other's), and
count the starts twice. The daemon holds an exclusive `flock` on DATA/gibsey.lock for its whole
life; the kernel lets go of it when the process ends however it ends (kill -9, power cut), so a
restart under systemd never waits for a stale lock. The commands that work beside a running node
(`gibsey ledger ...`, `gibsey doctor`) do not take it; `holder` says which process holds it,
without taking it, for the one answer to "which process runs this data directory".
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "gibsey.lock"
LOCKS_TABLE = Path("/proc/locks")  # the kernel's table of the locks held now (Linux)


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


def holder(data_dir: Path) -> int | None:
    """The pid of the process holding `data_dir`'s lock (its running node), as the kernel's table
    of locks says; None when the lock file is missing or nobody holds it.

    Read, never taken: a doctor that took the lock even for a moment could make a node starting
    meanwhile refuse to start. The pid written in the file alone is no answer: it stays there
    after its process ends (kill -9, a power cut), and another process may take the pid since."""
    path = data_dir / LOCK_FILE
    try:
        lock = os.stat(path)
    except OSError:
        return None
    pid = _flock_writer(lock)
    if pid is None or pid > 0:
        return pid
    # Listed, but with no pid of this /proc's pid namespace (0 for a holder it cannot see; newer
    # kernels leave such a lock out, and then this says None): the pid the holder wrote is the
    # best answer left, read only while the lock is listed, so a stale one never counts.
    return _written_pid(path)


def _flock_writer(lock: os.stat_result) -> int | None:
    """The pid the kernel lists for an exclusive flock on the file `lock` was stat'ed from;
    None when there is none (or the table cannot be read: not Linux)."""
    try:
        rows = LOCKS_TABLE.read_text().splitlines()
    except OSError:
        return None
    # The kernel prints the device as the hex major and minor of the file system's superblock
    # (`%02x:%02x:%lu`: fe:00:1234, 00:2f:1234, longer minors in more digits) and the inode in
    # decimal; st_dev is the same device (not on btrfs, whose st_dev is the subvolume's).
    want = (os.major(lock.st_dev), os.minor(lock.st_dev), lock.st_ino)
    for row in rows:
        # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:1234 0 EOF"; a process waiting for a lock is
        # listed as "1: -> FLOCK ..." and holds nothing. Only an exclusive flock is DataDirLock's
        # (a POSIX lock, a shared flock, an OFD lock or a lease on the file is someone else's).
        fields = row.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return int(fields[4])
        except ValueError:
            continue  # "<none>:0" (a lock on no inode) or a format this does not know
    return None


def _written_pid(path: Path) -> int | None:
    """The pid the holder wrote into the lock file (opened to read: no lock taken)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _holder(fd) or None  # empty (the holder is writing it now), or not a pid
    finally:
        os.close(fd)
