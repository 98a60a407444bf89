"""The opcode table: which program each of the 256 QDPI states runs, stored in SQLite, versioned.

`programs` holds bytecode by content hash; `bindings` holds every (state, version) -> program
ever bound, so a change can be traced and rolled back. Only verified bytecode is ever bound: the
verifier runs before the insert, and a refused program leaves the old binding in place.

The daemon and `gibsey vm load` open the same file (WAL mode, so they can); the daemon notices a
commit from another process through `PRAGMA data_version` (a counter SQLite bumps when another
connection commits), so it can check on every rotation and a new program takes effect on the very
next turn of the dial, with no restart. The PRAGMA costs ~3 us through the sqlite3 module, so a
cheaper look goes first (WalIndexWatch): only when the WAL index changed is the PRAGMA asked.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gibsey.core.storage import moved_aside, open_sqlite, unreadable
from gibsey.core.symbols import BASE_SYMBOLS, ROTATIONS, state_key
from gibsey.node.glyph.default_programs import default_programs
from gibsey.node.glyph.vm import binding as vm

log = logging.getLogger("gibsey.glyph")

FILENAME = "opcodes.sqlite3"
# What goes with the table when it is moved aside (damaged): a new one binds the defaults.
LOST = (
    "a new table binds the default programs, and a program loaded with `gibsey vm load` must be "
    "loaded again"
)
STATES = BASE_SYMBOLS * len(ROTATIONS)
MAX_PROGRAM = 64 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS programs (
    hash     TEXT PRIMARY KEY,
    bytecode BLOB NOT NULL,
    source   TEXT
);
CREATE TABLE IF NOT EXISTS bindings (
    state    INTEGER NOT NULL CHECK (state BETWEEN 0 AND 255),
    version  INTEGER NOT NULL,
    program  TEXT NOT NULL REFERENCES programs(hash),
    origin   TEXT NOT NULL,
    bound_at REAL NOT NULL,
    PRIMARY KEY (state, version)
);
"""


def program_hash(bytecode: bytes) -> str:
    return hashlib.sha256(bytecode).hexdigest()


def check_program(bytecode: bytes) -> None:
    """What `bind` asks of a program before binding it: at most MAX_PROGRAM bytes (ValueError),
    then the verifier's yes (vm.VerifyError). `gibsey vm verify` asks the same."""
    if len(bytecode) > MAX_PROGRAM:
        raise ValueError(f"program is {len(bytecode)} bytes; the limit is {MAX_PROGRAM}")
    vm.verify(bytecode)


@dataclass(frozen=True)
class Binding:
    state: int
    version: int
    program: str  # sha256 hex of the bytecode
    bytecode: bytes
    origin: str

    @property
    def key(self) -> str:
        return state_key(self.state)

    @property
    def short(self) -> str:
        return self.program[:12]


class WalIndexWatch:
    """A first look for commits to a WAL-mode database, at memory speed.

    Every commit rewrites the wal-index header at the start of the database's -shm file (its
    change counter, last valid frame and checkpoint salts; https://www.sqlite.org/walformat.html,
    "the wal-index header"): SQLite itself compares that header to know whether its cache is
    stale. Comparing those bytes through a read-only mapping costs ~0.1 us, against ~3 us for
    `PRAGMA data_version`. The watch only says "maybe changed": any difference, or no -shm file
    to map, falls through to the PRAGMA, which stays the authority. A commit is complete (and
    its writer's call returned) only after the header was rewritten, so a commit that finished
    before a rotation is always seen by that rotation."""

    HEADER = 96  # two copies of the 48-byte header; a writer updates both

    def __init__(self, db_path: Path) -> None:
        self._path = Path(f"{db_path}-shm")
        self._map: mmap.mmap | None = None
        self._last = b""

    def maybe_changed(self) -> bool:
        if self._map is None and not self._open():
            return True
        assert self._map is not None
        header = self._map[: self.HEADER]
        if header == self._last:
            return False
        self._last = header
        return True

    def _open(self) -> bool:
        try:
            with open(self._path, "rb") as f:
                if f.seek(0, 2) < self.HEADER:
                    return False
                self._map = mmap.mmap(f.fileno(), self.HEADER, access=mmap.ACCESS_READ)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)


class OpcodeTable:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._existed = path.exists()  # a new node's table is seeded without a word
        what, fix = f"the opcode table {path}", moved_aside(path, LOST)
        self._db = open_sqlite(str(path), what, _setup, fix)
        try:
            self._seed()  # reads every binding: a damaged page the opening did not read
        except sqlite3.DatabaseError as exc:
            self._db.close()
            damaged = unreadable(exc, what, fix)
            if damaged is None:
                raise
            raise damaged from exc
        self._wal = WalIndexWatch(path)
        self._wal.maybe_changed()
        self._data_version = self._current_data_version()

    @classmethod
    def open(cls, data_dir: Path) -> OpcodeTable:
        return cls(data_dir / FILENAME)

    def close(self) -> None:
        self._wal.close()
        self._db.close()

    def _current_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def changed_elsewhere(self) -> bool:
        """True once after another process committed to the table."""
        if not self._wal.maybe_changed():
            return False
        now = self._current_data_version()
        if now != self._data_version:
            self._data_version = now
            return True
        return False

    def _seed(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(DISTINCT state) FROM bindings").fetchone()
        if count == STATES:
            return
        if self._existed:
            # Not a new node: its file was emptied or lost rows (a card's damage, a file
            # restored from elsewhere), and the programs loaded into it with them.
            log.warning(
                "%s had programs bound for %d of the %d states: the default programs are bound "
                "for the other %d (a program loaded with `gibsey vm load` before must be loaded "
                "again)",
                self.path,
                count,
                STATES,
                STATES - count,
            )
        defaults = default_programs()
        with self._transaction():
            bound = {s for (s,) in self._db.execute("SELECT DISTINCT state FROM bindings")}
            for state, (source, bytecode) in defaults.items():
                if state not in bound:
                    self._insert(state, bytecode, source, "default")

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    def _insert(self, state: int, bytecode: bytes, source: str | None, origin: str) -> Binding:
        digest = program_hash(bytecode)
        self._db.execute(
            "INSERT OR IGNORE INTO programs(hash, bytecode, source) VALUES (?, ?, ?)",
            (digest, bytecode, source),
        )
        (version,) = self._db.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM bindings WHERE state = ?", (state,)
        ).fetchone()
        self._db.execute(
            "INSERT INTO bindings(state, version, program, origin, bound_at) VALUES (?,?,?,?,?)",
            (state, version, digest, origin, time.time()),
        )
        return Binding(state, version, digest, bytecode, origin)

    def bind(
        self, state: int, bytecode: bytes, *, source: str | None = None, origin: str = "cli"
    ) -> Binding:
        """Bind verified `bytecode` to `state`. Raises vm.VerifyError (nothing changes) if the
        verifier refuses it, ValueError for a state or size out of range."""
        if not 0 <= state < STATES:
            raise ValueError(f"state {state} is outside the QDPI-256 table (0..255)")
        check_program(bytecode)
        with self._transaction():
            binding = self._insert(state, bytecode, source, origin)
        # Our own commit must not look like someone else's.
        self._data_version = self._current_data_version()
        return binding

    def current(self) -> dict[int, Binding]:
        """The binding in force for every state (the highest version)."""
        rows = self._db.execute(
            """SELECT b.state, b.version, b.program, p.bytecode, b.origin
               FROM bindings b JOIN programs p ON p.hash = b.program
               WHERE b.version = (SELECT MAX(version) FROM bindings x WHERE x.state = b.state)"""
        ).fetchall()
        return {r[0]: Binding(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows}

    def history(self, state: int) -> list[Binding]:
        rows = self._db.execute(
            """SELECT b.state, b.version, b.program, p.bytecode, b.origin
               FROM bindings b JOIN programs p ON p.hash = b.program
               WHERE b.state = ? ORDER BY b.version""",
            (state,),
        ).fetchall()
        return [Binding(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def source(self, program: str) -> str | None:
        row = self._db.execute("SELECT source FROM programs WHERE hash = ?", (program,)).fetchone()
        return None if row is None else row[0]


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
