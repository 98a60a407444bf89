"""The disk refused a write: one error for every layer, and one place that knows it happened.

A gallery node runs for months on an SD card. The card fills up (ENOSPC), wears out (EIO), or
the kernel remounts it read-only after an error (EROFS). None of these is a bug of the caller and
none is mended by retrying at once, so every layer turns them into the same `StorageError`: the
ledger keeps its head at what is stored, the gateway answers 507, the status loop carries on, and
`DiskHealth` lets the node say so once per episode and notice by itself when writes work again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# What a disk that refuses writes answers. EDQUOT is ENOSPC for one user's share of the disk.
REFUSED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
# SQLite's primary result codes for a disk that refuses a write: full, and the ones that carry
# no errno (a failing card, a read-only remount, WAL files it cannot create).
SQLITE_FULL = sqlite3.SQLITE_FULL
SQLITE_REFUSED = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN})
# apsw (the agents' database, where the stdlib's sqlite3 cannot load extensions) names the same
# result codes as exception classes.
_APSW_CODES = {
    "FullError": SQLITE_FULL,
    "IOError": sqlite3.SQLITE_IOERR,
    "ReadOnlyError": sqlite3.SQLITE_READONLY,
    "CantOpenError": sqlite3.SQLITE_CANTOPEN,
}
# The exit status of a command stopped by a disk that refuses writes: EX_TEMPFAIL (sysexits.h),
# "try again later". Not 0, so systemd's Restart=on-failure starts the node again.
EXIT_DISK_REFUSED = 75
ALERT_REASON = "disk_full"
# Below this much free space an opaque failure (SQLite's "disk I/O error") is taken for a full
# disk: SQLite needs a few pages of room for any commit.
NEARLY_FULL_BYTES = 64 * 1024


class StorageError(OSError):
    """The disk refused a write (full, failing or read-only): nothing was stored.

    An OSError (with `errno`), so code that already handles OSError keeps doing so; `what` says
    which write it was."""

    def __init__(self, code: int, what: str) -> None:
        name = errno.errorcode.get(code, str(code))
        super().__init__(code, f"{os.strerror(code)} ({name})")
        self.what = what

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.errno or 0, str(self.errno))

    def __str__(self) -> str:
        return f"{self.what}: {self.strerror}"


def refusal(exc: OSError, what: str) -> StorageError | None:
    """`exc` as a StorageError when it means the disk refused the write, else None."""
    if isinstance(exc, StorageError):
        return exc
    if exc.errno in REFUSED_ERRNOS:
        return StorageError(exc.errno, what)
    return None


def sqlite_refusal(exc: BaseException, what: str, directory: str | Path) -> StorageError | None:
    """`exc` as a StorageError when SQLite (or the OS) says the disk refused a write, else None.
    SQLite gives no errno but for a full disk: the one behind "disk I/O error" is found by
    probing `directory` (likely_errno)."""
    if isinstance(exc, OSError):
        return refusal(exc, what)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    elif type(exc).__module__ == "apsw":
        code = _APSW_CODES.get(type(exc).__name__, 0)
    else:
        return None
    if code == SQLITE_FULL:
        return StorageError(errno.ENOSPC, what)
    if code in SQLITE_REFUSED:
        return StorageError(likely_errno(directory), what)
    return None


# SQLite's result codes for a file it cannot read as a database: damaged pages, or no database.
SQLITE_UNREADABLE = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
# ... as apsw's exception classes (the agents' database).
_APSW_UNREADABLE = frozenset({"CorruptError", "NotADBError"})
# What to do about a damaged database that holds what exists nowhere else (the ledger).
RESTORE = "restore it from a backup of the data directory (`gibsey doctor` checks each database)"


def moved_aside(path: str | Path, lost: str) -> str:
    """What to do about a damaged database the node can do without: move it aside with its WAL
    files (kept for a person to look into; a WAL left behind would be read into the new
    database) and start again, the node making a new one; `lost`: what goes with it."""
    folder = shlex.quote(str(Path(path).parent / "damaged"))
    return (
        f"move it aside with its -wal and -shm files (`mkdir -p {folder} && mv "
        f"{shlex.quote(str(path))}* {folder}/`) and start again: {lost}"
    )


def emptied(path: str | Path) -> bool:
    """Whether the database at `path` is there but holds nothing: 0 bytes, and no WAL holding
    its pages either. SQLite reads such a file as a new, empty database, without a word; a node
    that made it wrote its first page at once, so a card lost what it held."""
    try:
        if os.stat(path).st_size:
            return False
    except OSError:
        return False
    try:
        return os.stat(f"{path}-wal").st_size == 0
    except OSError:
        return True


class DatabaseUnreadable(sqlite3.DatabaseError):
    """A database file that SQLite cannot read: damaged, not a database, or a directory in its
    place. Not the disk (the card takes writes): retrying or freeing space mends nothing, and
    nothing was written to it. A sqlite3.DatabaseError, so the callers that catch SQLite's
    errors (doctor's checks) go on catching it."""


def damaged_database(exc: BaseException) -> bool:
    """Whether SQLite (the stdlib's or apsw) says the file is damaged or no database."""
    if isinstance(exc, DatabaseUnreadable):
        return True
    if isinstance(exc, sqlite3.DatabaseError):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF in SQLITE_UNREADABLE
    return type(exc).__module__ == "apsw" and type(exc).__name__ in _APSW_UNREADABLE


def unreadable(exc: BaseException, what: str, fix: str = RESTORE) -> DatabaseUnreadable | None:
    """`exc` as DatabaseUnreadable when SQLite found `what` damaged or no database, else None:
    at its opening or at the first read of a damaged page, which may come later. The message
    names `what` and says what to do (`fix`): one line."""
    if isinstance(exc, DatabaseUnreadable):
        return exc
    if not damaged_database(exc):
        return None
    return DatabaseUnreadable(f"{what} is damaged: {exc}; nothing was written to it: {fix}")


def open_sqlite(
    path: str, what: str, setup: Callable[[sqlite3.Connection], object], fix: str = RESTORE
) -> sqlite3.Connection:
    """A connection to the SQLite database at `path` (autocommit: the caller BEGINs and
    COMMITs; any thread: the caller's lock serialises use), made ready by `setup` (pragmas, the
    schema). Opening writes too - SQLite creates the WAL files - so a disk that refuses that
    raises StorageError, naming the database as `what`; a file SQLite cannot read raises
    DatabaseUnreadable, which says what to do (`fix`)."""
    if os.path.isdir(path):  # SQLite says only "unable to open", as for a failing card
        raise DatabaseUnreadable(
            f"{what} is a directory, not a database: move it away (nothing was written)"
        )
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        setup(db)
    except sqlite3.Error as exc:
        db.close()
        damaged = unreadable(exc, what, fix)
        if damaged is not None:
            raise damaged from exc
        refused = sqlite_refusal(exc, what, os.path.dirname(path) or ".")
        if refused is None:
            raise
        raise refused from exc
    return db


def refused_advice(data_dir: str | Path, exc: StorageError, again: str = "start again") -> str:
    """One line for a command the disk stopped: what is wrong with the data directory (or the
    disk, for a write outside it), the write it refused with its errno, and what to do."""
    where = f"the data directory {data_dir}" if str(data_dir) in exc.what else "the disk"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where} has no room: {exc}; free space and {again}"
    if exc.errno == errno.EROFS:
        return (
            f"{where} is read-only: {exc}; the kernel remounts a card read-only after an "
            f"error: check it (`dmesg`, fsck), reboot and {again}"
        )
    return f"{where} refuses writes: {exc}; the card may be failing: check it (`dmesg`) and {again}"


@contextmanager
def disk_write(what: str) -> Iterator[None]:
    """Raise a StorageError (from the OSError) when the disk refuses a write in this block."""
    try:
        yield
    except OSError as exc:
        refused = refusal(exc, what)
        if refused is None:
            raise
        raise refused from exc


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`: a nearly full disk may take part of a write before it
    refuses the rest (raising then)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: str | Path) -> None:
    """fsync a directory, so a file created or renamed in it keeps its name after a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(directory: str | Path) -> int:
    """The bytes this process may still write on `directory`'s file system (root may use the
    blocks ext4 reserves for it; others may not)."""
    st = os.statvfs(directory)
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def no_room(directory: str | Path) -> bool:
    """Whether `directory`'s file system is full: less than NEARLY_FULL_BYTES free (False
    when it cannot be asked)."""
    try:
        return free_bytes(directory) < NEARLY_FULL_BYTES
    except OSError:
        return False


def likely_errno(directory: str | Path) -> int:
    """The errno behind a failure that does not carry one (SQLite says "disk I/O error" for a
    read-only remount and a failing card alike), found by trying: a small file is created,
    written and removed in `directory`. What that write says (EROFS, ENOSPC, EIO), else ENOSPC
    when the disk is nearly full, else EIO."""
    probe = Path(directory) / f".probe-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in REFUSED_ERRNOS:
            return exc.errno
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    try:
        st = os.statvfs(directory)
    except OSError:
        return errno.EIO
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES:
        return errno.ENOSPC
    return errno.EIO


@dataclass(frozen=True)
class Episode:
    """Writes refused from `since` (wall clock) on: how many, and the first refusal."""

    since: float
    first: StorageError
    refused: int


DiskListener = Callable[[StorageError | None], None]


class DiskHealth:
    """Whether the node's last write to its disk failed.

    Writers report each refusal (`refused_write`) and each success (`wrote`); the listener hears
    only the changes: the first refusal of an episode, and the first success after it. Thread
    safe: the ledger writes on its own thread."""

    def __init__(
        self, listener: DiskListener | None = None, directory: str | Path | None = None
    ) -> None:
        self.listener = listener
        # The disk's directory: a full disk's episode ends once it has room (see `wrote`).
        self.directory = directory
        self._lock = threading.Lock()
        self._episode: Episode | None = None
        self.last_episode: Episode | None = None  # the last one that ended
        self.refused_total = 0

    @property
    def episode(self) -> Episode | None:
        """The current episode of refused writes, None while writes work."""
        return self._episode

    def refused_write(self, exc: StorageError) -> bool:
        """Report a refused write; True when it starts an episode (the listener was told)."""
        with self._lock:
            self.refused_total += 1
            episode = self._episode
            if episode is not None:
                self._episode = Episode(episode.since, episode.first, episode.refused + 1)
                return False
            self._episode = Episode(time.time(), exc, 1)
        if self.listener is not None:
            self.listener(exc)
        return True

    def wrote(self) -> bool:
        """Report a write that worked; True when it ends an episode (the listener was told)."""
        if self._episode is None:  # the common case, without the lock
            return False
        if self._still_full():
            return False
        with self._lock:
            if self._episode is None:
                return False
            self.last_episode, self._episode = self._episode, None
        if self.listener is not None:
            self.listener(None)
        return True

    def _still_full(self) -> bool:
        """A full disk's episode goes on while it has no room, whatever one write did: a write
        that needs no new block (a page rewritten in place, a file truncated) works on a full
        disk, and an outside tester's node said "the disk takes writes again" 7 times in a
        minute on a card with 0 bytes free, its next writes refused each time."""
        episode, directory = self._episode, self.directory
        if episode is None or directory is None:
            return False
        return episode.first.errno in (errno.ENOSPC, errno.EDQUOT) and no_room(directory)


# The last episode of refused writes, written by the node when writes work again (it could not
# be written during the episode); `gibsey doctor` shows it.
EPISODE_FILE = "disk.json"


def episode_json(episode: Episode, until: float) -> bytes:
    first = episode.first
    return json.dumps(
        {
            "since": episode.since,
            "until": until,
            "refused": episode.refused,
            "errno": first.errno_name,
            "first": str(first),
        }
    ).encode()
