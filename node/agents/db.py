"""SQLite with the sqlite-vec extension, through the stdlib or through apsw.

Debian's and Raspberry Pi OS's Python can load extensions with the stdlib `sqlite3`; some builds
(this project's CI Python among them) are compiled without `enable_load_extension`, and there the
same database is opened through `apsw`. `Db` gives both the one small interface the agents use:
`execute` returning rows, `executemany`, and `transaction()`. Both run in autocommit mode with
explicit transactions, WAL journal, so readers (the CLI) never block the daemon.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gibsey.core.storage import StorageError, moved_aside, sqlite_refusal, unreadable

# The agents' database, in the data directory.
AGENTS_DB = Path("agents") / "agents.db"
# What goes with agents.db when it is moved aside (damaged) or found empty: none of it is kept
# anywhere else, and the node runs without it (the personas ship with the code, the ledger
# keeps the tokens).
AGENTS_LOST = (
    "the agents' memories of their visitors, the facts they learned, the Agency Tensor's "
    "counts and the answers flagged for review are lost (the personas and the ledger are not)"
)


class DbError(RuntimeError):
    pass


def stdlib_can_load_extensions() -> bool:
    return hasattr(sqlite3.Connection, "enable_load_extension")


@functools.cache
def vec_extension_path() -> str:
    """sqlite-vec's loadable extension, found without importing the `sqlite_vec` package: its
    __init__ imports NumPy when installed (~10 MiB resident in a daemon that needs none)."""
    spec = importlib.util.find_spec("sqlite_vec")
    if spec is None or spec.origin is None:
        raise DbError("sqlite-vec is not installed")
    # The path sqlite_vec.loadable_path() gives.
    return os.path.join(os.path.dirname(spec.origin), "vec0")


def pick_backend(choice: str = "auto") -> str:
    if choice == "auto":
        return "stdlib" if stdlib_can_load_extensions() else "apsw"
    if choice not in ("stdlib", "apsw"):
        raise DbError(f"sqlite backend {choice!r}: use auto, stdlib or apsw")
    return choice


class Db:
    def __init__(self, path: Path | str, backend: str = "auto", vec: bool = True) -> None:
        self.backend = pick_backend(backend)
        self.path = str(path)
        self._lock = threading.RLock()  # one connection, used from the loop and worker threads
        self._std: sqlite3.Connection | None = None
        self._apsw: Any = None
        try:
            with self._refusals():  # opening writes too: the WAL files, the pragmas
                self._open(vec)
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        """A write the disk refuses (full, failing, read-only), from either backend, raises
        StorageError: the node says so once and its commands say it in one line. A file SQLite
        cannot read (damaged, no database) raises DatabaseUnreadable, naming it and what to do."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            what = f"the agents' database {self.path}"
            damaged = unreadable(exc, what, moved_aside(self.path, AGENTS_LOST))
            if damaged is not None:
                raise damaged from exc
            where = os.path.dirname(self.path) or "."
            refused = sqlite_refusal(exc, what, where)
            if refused is None:
                raise
            raise refused from exc

    def _open(self, vec: bool) -> None:
        if self.backend == "stdlib":
            if vec and not stdlib_can_load_extensions():
                raise DbError("this Python's sqlite3 cannot load extensions; use the apsw backend")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._std = conn
            if vec:
                conn.enable_load_extension(True)
                conn.load_extension(vec_extension_path())
                conn.enable_load_extension(False)
        else:
            import apsw

            aconn = apsw.Connection(self.path)
            self._apsw = aconn
            if vec:
                aconn.enable_load_extension(True)
                aconn.load_extension(vec_extension_path())
                aconn.enable_load_extension(False)
            aconn.set_busy_timeout(5000)
        if self.path != ":memory:":
            self.execute("PRAGMA journal_mode=WAL")
            self.execute("PRAGMA synchronous=NORMAL")
        self.execute("PRAGMA busy_timeout=5000")

    def execute(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        with self._lock, self._refusals():
            if self._std is not None:
                return [tuple(r) for r in self._std.execute(sql, params).fetchall()]
            return [tuple(r) for r in self._apsw.execute(sql, params)]

    def create(self, schema: str) -> None:
        """Run a schema of `;`-separated statements (one at a time: both backends take that)."""
        for stmt in schema.split(";"):
            if stmt.strip():
                self.execute(stmt)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock, self._refusals():
            if self._std is not None:
                self._std.executemany(sql, rows)
            else:
                self._apsw.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Db]:
        with self._lock:
            if self._in_transaction():  # one a failing COMMIT left open
                self.execute("ROLLBACK")
            self.execute("BEGIN IMMEDIATE")
            try:
                yield self
                self.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on a full disk or an I/O error: a second ROLLBACK
                # would raise "cannot rollback" over the real error. A COMMIT the disk refused
                # may leave it open: rolled back here, or later writes would join it.
                if self._in_transaction():
                    with contextlib.suppress(Exception):
                        self.execute("ROLLBACK")
                raise

    def _in_transaction(self) -> bool:
        conn: Any = self._std if self._std is not None else self._apsw
        return bool(conn.in_transaction)

    def vec_version(self) -> str:
        return str(self.execute("select vec_version()")[0][0])

    def close(self) -> None:
        with self._lock:
            if self._std is not None:
                self._std.close()
            elif self._apsw is not None:
                self._apsw.close()
