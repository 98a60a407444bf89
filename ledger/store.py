"""SQLite storage of every feed this node holds, with the checks that keep them trustworthy.

One file, `ledger.sqlite3`, in the data directory. WAL mode with `synchronous=FULL`: each commit
fsyncs the WAL before returning, so an `append` that returned survives `kill -9` *and* a power
cut (NORMAL would survive kill -9 only - the design says the power is cut every night). Batched
APIs (`append_many`, `import_many`) pay that fsync once per batch.

With `commit_every_s` (the node's `[node] ledger_commit_every_s`), a small transaction that
stores only entries does not commit: its entries are appended to the entry log
(`ledger.sqlite3.entrylog`, entrylog.py) and fdatasynced, and the SQLite transaction stays open,
gathering such transactions, until it is that old (or holds BATCH_MAX_ROWS entries, or another
kind of write comes). What returned is on disk either way; this connection reads everything,
other processes read what is committed. Every write transaction that begins first folds what
the log holds and the database does not (a process killed mid-batch) back in, so no writer ever
extends a feed from a stale head; the log is emptied once all of it is committed.

Everything that changes the store happens under one lock and inside one transaction, after every
check has passed; a rejected import raises before the first write, so nothing changes.

What is read is checked too: a row damaged on disk, or stored under another release's rules,
is found before anything folds, serves or extends it (`_check_pending`), quarantined with the
rest of its feed (`bad_rows()`), and everything before it goes on counting and serving.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from nacl.signing import SigningKey

from gibsey.core.storage import (
    DiskHealth,
    StorageError,
    disk_write,
    no_room,
    open_sqlite,
    sqlite_refusal,
    unreadable,
)

from . import entry as entry_mod
from . import forkproof, parsepool
from .batchclock import BatchClock
from .entry import MAX_ENTRY_BYTES, MAX_GROUP, Entry, parse, run_too_long, verify_signature
from .entrylog import SUFFIX as ENTRY_LOG_SUFFIX
from .entrylog import EntryLog
from .errors import LedgerError, OwnFeedWaits, Rejected, RejectReason
from .forkproof import ForkProof
from .ownfeed import OwnFeedMark

log = logging.getLogger("gibsey.ledger")
# Shown where logging is set up (the node, `mesh serve`); a command says it in its own words.
log.addHandler(logging.NullHandler())

DB_FILENAME = "ledger.sqlite3"
REFUSED_SUFFIX = ".refused"  # after the entry log's name: the records it refused (_set_aside)
DAMAGED_SUFFIX = ".damaged-"  # after the entry log's name: a copy of one with damaged bytes
# Unsigned entries held pending their group's head, over all feeds (at most MAX_GROUP - 1 per
# feed): 1024 entries of at most 8 KiB. Past it the feed extended least recently is dropped;
# its entries are not acknowledged (the version vector never says we hold them), so its peer
# sends them again.
MAX_PENDING_ENTRIES = 1024
SCHEMA_VERSION = 1
# With commit_every_s: a transaction storing more entries than this commits at once (an import
# of a peer's history: its own commit already carries many entries a page), and a batch that
# has gathered this many commits before its time.
LOG_MAX_ROWS = 64
BATCH_MAX_ROWS = 1024
# A batch also commits once this long passes without a logged write: a quiet node's entries are
# read by other processes (and their writers get the lock) seconds after it wrote them, while a
# busy one (a group every [node] ledger_group_wait_s = 2 s) still gathers a batch.
BATCH_IDLE_S = 3.0
# Another process's writer waits this long for the write lock: longer than a batch holds it
# (commit_every_s is at most 30 s in the node's config).
BUSY_TIMEOUT_MS = 45_000
# Memory (a Pi Zero 2 W has 512 MB; a 42 MB corpus import is ~12,000 entries of ~4 KiB): rows
# are read, checked, written and re-read for the listeners this many at a time, never a whole
# feed or ledger at once; up to KEEP_ROWS new entries of one feed are kept for the listeners
# (re-read from the table past that, a chunk at a time).
CHUNK_ROWS = 256
KEEP_ROWS = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    author  BLOB    NOT NULL,
    seq     INTEGER NOT NULL,
    hash    BLOB    NOT NULL,
    lamport INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    raw     BLOB    NOT NULL,
    PRIMARY KEY (author, seq)
);
-- The fold order of every view is (lamport, author, seq): read through this index on the
-- Lamport clock alone, ties (a few entries of other feeds) sorted by SQLite as they come.
CREATE INDEX IF NOT EXISTS entries_lamport ON entries (lamport);
CREATE TABLE IF NOT EXISTS forks (
    author BLOB    NOT NULL,
    seq    INTEGER NOT NULL,
    proof  BLOB    NOT NULL,
    PRIMARY KEY (author, seq)
);
"""


def _drop_fold_order_index(db: sqlite3.Connection) -> None:
    """Drop the (lamport, author, seq) index stores made before `entries_lamport` (once).

    Why (gibsey bench wear): its entries carry the 32-byte author, so its leaves filled and
    split ~4x as often as the Lamport clock's alone, ~160 B more written an entry (WAL and
    checkpoint) in a bare SQLite with the node's commits; the fold order reads as well
    through the Lamport index, its ties sorted as they come (ledger/CANONICAL.md's order
    is unchanged)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'entries_order'").fetchone():
        db.execute("DROP INDEX IF EXISTS entries_order")  # (autocommit: its own transaction)


def _drop_hash_index(db: sqlite3.Connection) -> None:
    """Rebuild an `entries` table made with `hash ... UNIQUE` without that index (once).

    Why (gibsey bench wear): the hash is random, so its index put every new entry on another
    leaf page - one more 4 KiB page in the WAL per entry, however many entries a commit holds,
    while the table and the other two indexes grow at their right edge, where a group of
    entries shares its pages. The index guarded nothing the key does not: two entries with
    one hash are the same bytes, so the same (author, seq). `get_by_hash` (tests, the harness)
    scans instead."""
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()
    if "UNIQUE" not in sql:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()
        if "UNIQUE" in sql:  # another process may have rebuilt it while we waited
            db.execute("ALTER TABLE entries RENAME TO entries_unique_hash")
            # Its Lamport index's name is free for the new table's (the old fold order index,
            # which _SCHEMA no longer makes, goes with the old table).
            db.execute("DROP INDEX IF EXISTS entries_lamport")
            for statement in _SCHEMA.split(";"):  # (executescript would commit first)
                db.execute(statement)  # the table without the index, the Lamport index
            cols = "author, seq, hash, lamport, type, raw"
            db.execute(f"INSERT INTO entries ({cols}) SELECT {cols} FROM entries_unique_hash")
            db.execute("DROP TABLE entries_unique_hash")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class _Run(list[Entry]):
    """A feed's unsigned entries held for their group's head, with their bytes counted as they
    are added (summed again at each entry, a 64-entry group cost a third of an import's time)."""

    __slots__ = ("raw_bytes",)

    def __init__(self) -> None:
        super().__init__()
        self.raw_bytes = 0

    def add(self, e: Entry) -> None:
        self.append(e)
        self.raw_bytes += len(e.raw)


_INSERT = "INSERT INTO entries (author, seq, hash, lamport, type, raw) VALUES (?,?,?,?,?,?)"
_COLUMNS = "author, seq, hash, lamport, type, raw"
StoredRow = tuple[bytes, int, bytes, int, str, bytes]  # a row of `entries`, in _COLUMNS order


def _row(e: Entry) -> tuple[bytes, int, bytes, int, str, bytes]:
    return (e.author, e.seq, e.hash, e.lamport, e.type, e.raw)


class ImportStatus(StrEnum):
    APPENDED = "appended"  # new entry, now the head of its feed
    DUPLICATE = "duplicate"  # we already held exactly this entry; nothing changed
    FORK = "fork"  # a second, different entry at a seq we hold: fork proof stored
    # An unsigned entry (format v2) held in memory, not stored, until the signed head of its
    # group arrives (CANONICAL.md section 3); dropped if the head does not come.
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class ImportResult:
    status: ImportStatus
    entry: Entry
    proof: ForkProof | None = None
    # A signed head's APPENDED result: the pending entries of its group stored with it.
    earlier: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes
    lamport: int


@dataclass(frozen=True, slots=True)
class BadRow:
    """A stored row that fails its checks (damaged on disk, or stored under other rules): it
    and every later entry of its feed are quarantined - never folded, served or extended."""

    author: bytes
    seq: int
    problem: str

    def __str__(self) -> str:
        # A damaged row's author column may hold text, not the key's bytes: named as it is.
        author: bytes | str = self.author
        who = (
            author.hex()
            if isinstance(author, bytes)
            else f"{author.encode('utf-8', 'surrogateescape').hex()} (its author stored as text)"
        )
        return f"feed {who} seq {self.seq}: {self.problem}"


BadRowListener = Callable[[BadRow], None]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    entries: int
    feeds: int
    bad_author: bytes | None = None  # the first bad row (of all feeds, then of the fork proofs)
    bad_seq: int | None = None
    problem: str = ""
    bad_rows: tuple[BadRow, ...] = ()  # the first bad row of every feed, then bad fork proofs

    @property
    def ok(self) -> bool:
        return self.bad_author is None and not self.problem


@dataclass(slots=True)
class _NewRun:
    """Entries of one feed found good by a check, or stored here: seq `after` + 1 to `to`, and
    the entries themselves when there were at most KEEP_ROWS (else None: read again when told
    to the listeners, a chunk at a time, by `Store._run_entries`)."""

    author: bytes
    after: int
    to: int
    entries: list[Entry] | None

    def since(self, seq: int) -> _NewRun | None:
        """The part of this run after `seq` (None if nothing of it is)."""
        if seq >= self.to:
            return None
        if seq <= self.after:
            return self
        kept = None if self.entries is None else [e for e in self.entries if e.seq > seq]
        return _NewRun(self.author, seq, self.to, kept)


Listener = Callable[[Entry | ForkProof], None]
Stored = list[Entry | ForkProof]  # what a transaction stored, told to the listeners after it
News = list[_NewRun | ForkProof]  # what another connection stored (Store._catch_up)


class _Caches(NamedTuple):
    """What a write transaction may change in the caches (put back if it fails)."""

    heads: dict[bytes, Head]
    max_lamport: int
    entries: int
    quarantine: dict[bytes, int]
    fork_keys: set[tuple[bytes, int]]


class Store:
    # What the entry log's reading last skipped, said once (EntryLog.skipped, _say_skipped).
    _log_skipped_said: tuple[tuple[int, int], ...] = ()

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        verify_threads: int | None = None,
        parse_process: bool | None = None,  # None: when a core is idle (parsepool.py)
        disk: DiskHealth | None = None,
        commit_every_s: float = 0.0,  # 0: every transaction commits (see the module's doc)
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"synchronous={synchronous!r}")
        if not 0.0 <= commit_every_s <= 30.0:
            raise ValueError(f"commit_every_s={commit_every_s!r}: from 0 to 30 s")
        self.path = str(path)
        # Told of every refused and every working write (the node shares one with its other
        # writers, to say "disk full" once per episode).
        self.disk = disk if disk is not None else DiskHealth()
        # Ed25519 verification releases the GIL (PyNaCl calls libsodium through cffi), so a
        # batch import verifies on several cores; a Pi 4/5 has four.
        self.verify_threads = verify_threads or min(4, os.cpu_count() or 1)
        # A large import is parsed on a second core by a worker process (parsepool.py).
        self.parse_process = parse_process
        self._pool: ThreadPoolExecutor | None = None
        self.lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
        # what the code says. check_same_thread=False: the lock serialises all use.
        self._db = open_sqlite(self.path, f"the ledger {self.path}", self._setup(synchronous))
        self._listeners: list[Listener] = []
        # Reading: per feed, the last entry of its prefix that passed every check; the first
        # row that failed one (quarantined from there on); the feeds checked at least once.
        self._checked: dict[bytes, Head] = {}
        self._bad: dict[bytes, BadRow] = {}
        self._looked: set[bytes] = set()
        self._bad_listeners: list[BadRowListener] = []
        self._in_tx = False
        # Unsigned entries of each feed waiting for their group's signed head: one chained run
        # per feed, the feed extended most recently last.
        self._pending: dict[bytes, _Run] = {}
        # Rows an import has checked but not yet written: written with one executemany before
        # anything reads the table and at the end of the transaction (~40% of an import's
        # SQLite time is per-statement overhead).
        self._staged: list[StoredRow] = []
        # The entry log and the batch (module doc): when the open batch began (None: no batch
        # open), its entries, which batch a timer was set for; this transaction's entries (to
        # log) and the entry rows it stored (anything else it wrote makes it commit).
        in_memory = self.path == ":memory:" or self.path.startswith("file:")
        self.commit_every_s = 0.0 if in_memory else commit_every_s
        self._log = None if in_memory else EntryLog(self.path + ENTRY_LOG_SUFFIX)
        # How far this node signed its feeds, outside the database (ownfeed.py), and the keys
        # this process signed with: a wiped or old ledger must not be signed on (a fork).
        self.own_mark = None if in_memory else OwnFeedMark(Path(self.path).parent)
        self._signed_here: set[bytes] = set()
        self._batch_since: float | None = None
        self._batch_rows = 0
        self._batch_id = 0
        self._clock = BatchClock(self.lock, self._commit_when_due, f"ledger-batch {self.path}")
        self._tx_log: list[bytes] = []
        self._tx_rows = 0
        try:
            self._load_caches()
            # Changes only when another connection commits (see refresh()).
            self._data_version: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:  # a damaged page the opening did not read
            self._db.close()
            damaged = unreadable(exc, f"the ledger {self.path}")
            if damaged is None:
                raise
            raise damaged from exc
        self._settle_log()

    @staticmethod
    def _setup(synchronous: str) -> Callable[[sqlite3.Connection], None]:
        def setup(db: sqlite3.Connection) -> None:
            # A damaged row may hold text that is no UTF-8 where bytes belong: read, it names
            # its row (check_row) instead of failing every read of the table.
            db.text_factory = _lenient_text
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # The old fold index first: its pages go to the freelist and the Lamport index the
            # schema then builds takes them, so a nearly full card's database does not grow.
            _drop_fold_order_index(db)
            db.executescript(_SCHEMA)
            _drop_hash_index(db)
            # Written once: an INSERT, even one ignored, waits for the write lock, which a
            # running node's batch may hold for seconds (a reader opening the store need not).
            if db.execute("SELECT 1 FROM meta WHERE key = 'schema'").fetchone() is None:
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )

        return setup

    @classmethod
    def open(cls, data_dir: Path, **kwargs: Any) -> Store:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / DB_FILENAME, **kwargs)

    def close(self) -> None:
        with self.lock:
            try:
                self._commit_batch()
                self._settle_log()
            except (StorageError, sqlite3.Error) as exc:
                # Nothing acknowledged is lost: the entry log holds it for the next writer.
                log.warning("ledger: closing, the last batch could not be committed: %s", exc)
            self._mark_heads(force=True)  # what this process signed, marked
            if self._log is not None:
                self._log.close()
            self._clock.close()
            self._db.close()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    # ---- caches ---------------------------------------------------------------------------

    def _load_caches(self) -> None:
        """Heads, the top Lamport clock and quarantine points, read back from the database."""
        self._heads: dict[bytes, Head] = {}
        rows = self._db.execute(
            "SELECT e.author, e.seq, e.hash, e.lamport FROM entries e JOIN "
            "(SELECT author, MAX(seq) AS seq FROM entries GROUP BY author) h "
            "ON e.author = h.author AND e.seq = h.seq"
        )
        for author, seq, hash_, lamport in rows:
            # A damaged row whose author column holds text is no feed this store can look up
            # (its author cannot be bound as the key's bytes): `verify` names the row.
            if type(author) is bytes:
                self._heads[author] = Head(seq, hash_, lamport)
        (top,) = self._db.execute("SELECT COALESCE(MAX(lamport), 0) FROM entries").fetchone()
        self._max_lamport: int = top
        self._quarantine: dict[bytes, int] = {}
        self._fork_keys: set[tuple[bytes, int]] = set()
        for author, seq in self._db.execute("SELECT author, seq FROM forks"):
            self._fork_keys.add((author, seq))
            old = self._quarantine.get(author)
            self._quarantine[author] = seq if old is None else min(old, seq)
        self._count: int = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # ---- transactions and listeners ---------------------------------------------------------

    @contextmanager
    def transaction(self, *, logged: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) under the store lock. `logged`:
        one that may end in the entry log, not a commit (module doc; the store's own appends
        and imports).

        Other parts of the ledger (governance's executions table) write in the same
        transaction as an append by nesting inside this.
        """
        with self.lock:
            if self._in_tx:
                yield self._db
                return
            batch = self._batch_since is not None
            if batch:
                self._db.execute("SAVEPOINT tx")  # inside the open batch
            else:
                self._begin()
            self._in_tx = True
            self._tx_log, self._tx_rows = [], 0
            before: _Caches | None = None
            changes = self._db.total_changes
            try:
                # Another process (the ledger or story CLI beside a running node) may have
                # appended to this feed since our caches were read: catch up under the write
                # lock, or we would sign a second entry at a seq that is already taken.
                caught_up = self._catch_up()
                if caught_up:
                    self._tell_news(caught_up)
                folded = 0 if batch else self._fold_log()
                before = self._caches()
                yield self._db
                wrote = self._db.total_changes - changes
                self._end(batch, wrote, logged and wrote == self._tx_rows and not folded)
            except BaseException as exc:
                self._undo(batch, before)
                self._raise_refused(exc)
            finally:
                self._in_tx = False

    def _end(self, batch: bool, wrote: int, loggable: bool) -> None:
        """End a transaction that succeeded: its entries logged and the batch kept open, or
        everything (the batch too) committed. One that wrote nothing leaves the batch open.
        The disk is said to take writes (`disk.wrote()`) after a commit, not after the entry
        log took a group: on a full disk the log may still fit a few in its last block, while
        every commit is refused."""
        if batch and not wrote:
            self._db.execute("RELEASE tx")
            return
        if loggable and self._log is not None and 0 < self._tx_rows <= LOG_MAX_ROWS:
            if self.commit_every_s > 0:
                self._log.append(self._tx_log)
                if batch:
                    self._db.execute("RELEASE tx")
                else:
                    self._open_batch()
                self._batch_rows += self._tx_rows
                assert self._batch_since is not None
                age = time.monotonic() - self._batch_since
                if self._batch_rows >= BATCH_MAX_ROWS or age >= self.commit_every_s:
                    self._commit_logged_batch()
                else:
                    self._arm_timer(min(BATCH_IDLE_S, self.commit_every_s - age))
                return
        if batch:
            self._db.execute("RELEASE tx")
        self._close_batch()
        self._db.execute("COMMIT")
        if wrote:
            self.disk.wrote()

    def _undo(self, batch: bool, before: _Caches | None) -> None:
        """After a failed transaction: inside a batch, only this transaction is rolled back
        (the batch's entries are acknowledged); else everything (_abandon)."""
        if batch and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK TO tx")
                self._db.execute("RELEASE tx")
                self._load_caches()  # as the batch left them
                return
            except sqlite3.Error:
                pass  # the disk refuses even that: give the batch up (the log holds it)
        self._close_batch()
        self._abandon(before)

    # ---- the batch and the entry log ----------------------------------------------------------

    def _open_batch(self) -> None:
        self._batch_since, self._batch_rows = time.monotonic(), 0
        self._batch_id += 1
        self._arm_timer(min(BATCH_IDLE_S, self.commit_every_s))

    def _arm_timer(self, after_s: float) -> None:
        """Commit the open batch in `after_s` unless another write comes first (which sets it
        again): after BATCH_IDLE_S without one, or at the batch's age limit."""
        self._clock.arm(after_s, self._batch_id)

    def _close_batch(self) -> None:
        self._batch_since, self._batch_rows = None, 0
        self._clock.disarm()

    def _commit_batch(self) -> None:
        """Commit the open batch, if one is (hold `lock`, outside a transaction's body)."""
        if self._batch_since is None:
            return
        self._close_batch()
        try:
            self._db.execute("COMMIT")
        except BaseException as exc:
            # Rolled back: its entries are in the entry log still, folded back in by the next
            # write transaction to begin (here or in another process).
            self._abandon(None)
            self._raise_refused(exc)
        self.disk.wrote()

    def _commit_when_due(self, batch_id: int) -> None:
        """The batch timer: commit the batch it was set for, if still open."""
        with self.lock:
            if self._batch_id != batch_id or self._batch_since is None or self._in_tx:
                return
            self._commit_logged_batch()

    def _commit_logged_batch(self) -> None:
        """Commit a batch whose every entry is in the entry log: a refused commit fails no one
        (what was acknowledged stays acknowledged, folded into a new batch by _abandon and
        committed by a later try)."""
        try:
            self._commit_batch()
        except StorageError as exc:
            # The node's DiskHealth says a refused write, once an episode; this one comes back
            # every commit_every_s while the disk is full, so it is for a debugging eye only.
            log.debug("ledger: a batch could not be committed (kept in its log): %s", exc)
        except sqlite3.Error as exc:
            log.warning("ledger: a batch could not be committed (kept in its log): %s", exc)

    def commit(self) -> None:
        """Commit the open batch now (a node stopping; a test reading from another process)."""
        with self.lock:
            self._commit_batch()

    def _fold_log(self, *, quiet: bool = False) -> int:
        """At the start of a write transaction (hold `lock`): store what the entry log holds and
        the database does not (the process that logged it stopped before its batch committed),
        every check made again; or, when the database holds all of it (or refuses the rest:
        damaged, forged, a group without its head), empty the log. Returns how many rows were
        stored (the transaction then commits, and the log is emptied by a later one)."""
        if self._log is None or self._log.size() == 0:
            return 0
        missing, refused = self._log_beyond_heads(self._log)
        if not missing:
            self._set_aside(refused)
            self._empty_log()
            return 0
        rows = self._tx_rows
        stored: list[Entry | ForkProof] = []
        results = self._import_parsed(self._db, self._parse_batch(missing), stored)
        headless: list[bytes] = []
        for raw, result in zip(missing, results, strict=True):
            if isinstance(result, Rejected):
                log.warning("ledger: an entry in the entry log is refused: %s", result)
                refused.append(raw)
            elif result.status is ImportStatus.PENDING:
                headless.append(raw)
        self._tx_log = []  # (already in the log)
        if self._tx_rows == rows:
            # Every record stored or refused: none is worth another look here. Entries of a
            # group whose signed head is lost (damaged, or refused) stay pending, unstored:
            # acknowledged all the same, so kept with the refused ones.
            self._set_aside(refused + headless)
            self._empty_log()
            return 0
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "ledger: %d acknowledged entries were in the entry log only (their batch was not "
            "committed: the process stopped, or the disk refused it): storing them again "
            "(a refused commit keeps them in the log)",
            self._tx_rows - rows,
        )
        return self._tx_rows - rows

    def _log_beyond_heads(self, entry_log: EntryLog) -> tuple[list[bytes], list[bytes]]:
        """The entry log's records the database does not hold (past their feed's head), and
        those that are no entry (hold `lock`)."""
        missing: list[bytes] = []
        refused: list[bytes] = []
        raws = entry_log.read()
        self._say_skipped(entry_log)
        for raw in raws:
            try:
                e = parse(raw, verify=False)
            except Rejected:
                refused.append(raw)  # (it passed its crc: only another release could write it)
                continue
            head = self._heads.get(e.author)
            if head is None or e.seq > head.seq:
                missing.append(raw)
                continue
            stored = self._db.execute(
                "SELECT hash FROM entries WHERE author = ? AND seq = ?", (e.author, e.seq)
            ).fetchone()
            if stored is not None and bytes(stored[0]) != e.hash:
                # Another entry at a seq the feed holds: a fork (two entries signed at one
                # seq), proved as the import of a peer's would be, never dropped unsaid.
                missing.append(raw)
        return missing, refused

    def _say_skipped(self, entry_log: EntryLog) -> None:
        """Say once what the entry log's last read skipped: a record a power cut tore (never
        acknowledged), or bytes the card damaged (acknowledged entries lost, unless the mesh
        brings them back)."""
        skipped = tuple(entry_log.skipped)
        if not skipped:
            return
        if self.own_mark is not None:  # acknowledged entries of our feed may be among them
            self.own_mark.hold(
                f"at {time.strftime('%Y-%m-%d %H:%M:%S')} the entry log {entry_log.path} had "
                f"{len(skipped)} record(s) cut short or damaged ({sum(n for _, n in skipped)} "
                "bytes): a write a power cut tore, or acknowledged entries of this node's feed "
                "the card lost, which its peers may hold"
            )
        if skipped == self._log_skipped_said:
            return
        self._log_skipped_said = skipped
        log.warning(
            "ledger: the entry log %s has %d record(s) cut short or damaged, from byte %d "
            "(%d bytes skipped; what follows is read on): a write a power cut tore was never "
            "acknowledged, anything else there is lost (`gibsey ledger verify`)",
            entry_log.path,
            len(skipped),
            skipped[0][0],
            sum(n for _, n in skipped),
        )

    def _empty_log(self) -> None:
        """Empty the entry log, every record in it stored or set aside. One whose last reading
        skipped damaged bytes is copied whole first (`<log>.damaged-<time>`): acknowledged
        entries may be in them, and nothing else holds those bytes."""
        assert self._log is not None
        if self._log.skipped:
            copy = f"{self._log.path}{DAMAGED_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}"
            with disk_write(f"a copy of the damaged entry log {copy}"):
                shutil.copyfile(self._log.path, copy)
            log.warning("ledger: the damaged entry log is copied whole to %s", copy)
        self._log.clear()

    def _set_aside(self, refused: list[bytes]) -> None:
        """Keep the bytes of entry-log records the store refused in `<log>.refused` before the
        log is emptied: acknowledged once, so never thrown away unread; a technician can look
        (each was logged with why). Appended, fdatasynced: a refused write leaves the log as
        it is, for the next look."""
        if not refused or self._log is None:
            return
        kept = EntryLog(self._log.path + REFUSED_SUFFIX)
        try:
            kept.append(refused)
        finally:
            kept.close()
        log.warning(
            "ledger: %d entry log record(s) refused; their bytes are kept in %s",
            len(refused),
            kept.path,
        )

    def _settle_log(self) -> None:
        """Fold a leftover entry log in and empty it, if the write lock is free right now (a
        live node's open batch holds it: that node will)."""
        if self._log is None or self._log.size() == 0:
            return
        try:
            with self._no_lock_wait():
                for _ in range(2):  # the first stores what is missing, the second empties it
                    if self._log.size() == 0:
                        return
                    with self.transaction():
                        pass
        except (sqlite3.OperationalError, StorageError) as exc:
            # (StorageError: the lock is held and the disk is full, _begin)
            log.info("ledger: entry log left to the process writing now (%s)", exc)

    @contextmanager
    def _no_lock_wait(self) -> Iterator[None]:
        """Within: the write lock is taken at once or not at all (SQLITE_BUSY), not waited for;
        then the wait is what it was (these nest: _settle_log's transaction may _begin here)."""
        (before,) = self._db.execute("PRAGMA busy_timeout").fetchone()
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(before)}")

    def _begin(self) -> None:
        """BEGIN IMMEDIATE (first ending a transaction a failing disk left open). On a disk with
        no room, the write lock is not waited for: the process holding it is a node whose own
        commits the disk refuses (it keeps its batch open meanwhile, _reopen_batch), so the wait
        would end in "database is locked" after BUSY_TIMEOUT_MS, and this write would be refused
        anyway. Said at once as what it is: the disk is full."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if self._log is not None and no_room(os.path.dirname(self.path) or "."):
                self._begin_without_waiting()
            else:
                self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._raise_refused(exc)

    def _begin_without_waiting(self) -> None:
        try:
            with self._no_lock_wait():
                self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            refused = StorageError(errno.ENOSPC, f"the ledger {self.path}")
            self.disk.refused_write(refused)
            raise refused from exc

    def _caches(self) -> _Caches:
        return _Caches(
            dict(self._heads),
            self._max_lamport,
            self._count,
            dict(self._quarantine),
            set(self._fork_keys),
        )

    def _abandon(self, before: _Caches | None) -> None:
        """After a failed transaction: roll back what SQLite has not rolled back already (a full
        disk or an I/O error rolls it back by itself, and a second ROLLBACK would raise over the
        real error), and read the caches back from what is stored, so no head stays advanced
        for an entry that was never stored."""
        if self._db.in_transaction:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        try:
            self._load_caches()
        except sqlite3.Error:
            # A failing disk may refuse the reads too: the caches as they were when this
            # transaction began (nothing of it was stored), read again at the next one.
            if before is not None:
                self._heads, self._max_lamport = before.heads, before.max_lamport
                self._count, self._quarantine = before.entries, before.quarantine
                self._fork_keys = before.fork_keys
            self._data_version = -1
            return
        self._reopen_batch()

    def _reopen_batch(self) -> None:
        """After a rollback that took a batch with it (its commit refused: a full disk): fold
        the entry log back into a new open batch, so this connection goes on reading every
        entry it acknowledged; the batch's timer tries the commit again."""
        if self.commit_every_s == 0 or self._log is None or self._log.size() == 0:
            return
        try:
            self._begin()
            self._tx_log, self._tx_rows = [], 0
            if self._fold_log(quiet=True):
                self._open_batch()
            else:
                self._db.execute("COMMIT")  # (all of it was committed: nothing to hold)
        except (StorageError, sqlite3.Error) as exc:
            log.debug("ledger: the entry log could not be folded back in yet: %s", exc)
            with suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            with suppress(sqlite3.Error):
                self._load_caches()

    def _raise_refused(self, exc: BaseException) -> NoReturn:
        """Raise `exc` again (in its `except`): as a StorageError when the disk refused it."""
        refused = self._refused(exc)
        if refused is None:
            raise exc
        raise refused from exc

    def _refused(self, exc: BaseException) -> StorageError | None:
        """`exc` as a StorageError (reported to `disk`) when the disk refused the write."""
        if isinstance(exc, StorageError):
            refused: StorageError | None = exc  # from a writer nested in the transaction
        elif isinstance(exc, sqlite3.Error):
            where = os.path.dirname(self.path) or "."
            refused = sqlite_refusal(exc, f"the ledger {self.path}", where)
        else:
            refused = None
        if refused is not None:
            self.disk.refused_write(refused)
        return refused

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` after each committed new entry or fork proof (in commit order); once,
        however often it subscribes (a mesh started again after its port was taken)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def _tell(self, items: Iterable[Entry | ForkProof]) -> None:
        for item in items:
            for listener in self._listeners:
                listener(item)

    def _tell_news(self, news: News) -> None:
        """Tell the listeners what a check found new (marked checked by the check already): each
        run's entries kept in memory, or read again a chunk at a time (the lock taken for each
        chunk only, when it is not held already)."""
        if not self._listeners:
            return
        for item in news:
            if isinstance(item, ForkProof):
                self._tell((item,))
            else:
                self._tell(self._run_entries(item))

    def _run_entries(self, run: _NewRun) -> Iterator[Entry]:
        """The entries of `run`: those kept, else read from the table CHUNK_ROWS at a time (rows
        checked already; one another process rewrote since is left out, as iter_ordered does)."""
        if run.entries is not None:
            yield from run.entries
            return
        seq = run.after
        while seq < run.to:
            with self.lock:
                rows = self._db.execute(
                    "SELECT seq, raw FROM entries WHERE author = ? AND seq > ? AND seq <= ? "
                    "ORDER BY seq LIMIT ?",
                    (run.author, seq, run.to, CHUNK_ROWS),
                ).fetchall()
            if not rows:
                return
            for n, raw in rows:
                seq = n
                try:
                    yield parse(raw, verify=False)
                except Rejected:
                    continue

    @contextmanager
    def _storing(self, *, logged: bool = False) -> Iterator[tuple[sqlite3.Connection, Stored]]:
        """A transaction storing new items (the caller appends each to the list): they are
        marked checked before the store lock is let go, then told to the listeners.

        Why before: a thread asking for heads in between (the mesh's version vector, on its
        event loop, every round of a catch-up) found the feeds ahead of their checked
        prefixes and parsed the whole batch again from the table - measured, a third of the
        catching-up node's event loop."""
        stored: Stored = []
        with self.lock:
            with self.transaction(logged=logged) as db:
                yield db, stored
            self._mark_checked(stored)
        self._tell(stored)

    def refresh(self) -> int:
        """Catch up with commits made by *other* connections (e.g. `gibsey ledger gift` run in
        another process while the mesh serves this data directory): reload the caches and
        notify listeners of every entry and fork proof they added. Returns how many items
        were new; cheap (one PRAGMA) when nothing changed. Used by the mesh before it imports
        and on a short poll."""
        with self.lock:
            if self._in_tx:
                return 0
            new = self._catch_up()
        self._tell_news(new)
        return sum(1 if isinstance(x, ForkProof) else x.to - x.after for x in new)

    def _catch_up(self) -> News:
        """Reload the caches if another connection committed; what it added (hold `lock`): runs
        of entries (a large one is not held in memory: see _tell_news) and fork proofs."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version == self._data_version:
            return []
        self._data_version = version
        old_heads = {a: h.seq for a, h in self._heads.items()}
        old_forks = set(self._fork_keys)
        self._load_caches()
        # Only what passes its checks is news; a bad row the other process wrote is
        # quarantined here, never handed to a listener (the view, the mesh).
        new: News = []
        for run in self._check_pending():
            part = run.since(old_heads.get(run.author, 0))
            if part is not None:
                new.append(part)
        for author, seq in self._fork_keys - old_forks:
            (data,) = self._db.execute(
                "SELECT proof FROM forks WHERE author = ? AND seq = ?", (author, seq)
            ).fetchone()
            new.append(forkproof.from_bytes(data))
        return new

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for read queries by other ledger modules (hold `lock` to write)."""
        return self._db

    # ---- checking what is stored -------------------------------------------------------------

    def _check_pending(self, only: bytes | None = None) -> list[_NewRun]:
        """Check the rows stored since the last check (by this process or another), of every
        feed or `only` one; return the runs of entries that passed, one per feed (the entries
        themselves when few: see _NewRun). A feed's first row that fails is recorded, logged
        and told to `on_bad_row` listeners, and it and the rest of its feed are quarantined
        (hold `lock`). Cheap when nothing is new: a comparison per feed. The rows are read and
        checked a row at a time, never a whole feed at once (a 42 MB story import is one feed
        of ~12,000 entries)."""
        out: list[_NewRun] = []
        feeds = self._heads.items() if only is None else [(only, self._heads[only])]
        for author, head in feeds:
            self._looked.add(author)
            bad = self._bad.get(author)
            if bad is not None and head.seq >= bad.seq:
                continue
            self._bad.pop(author, None)  # (the bad row is no longer stored)
            done = self._checked.get(author)
            if done is not None and done.seq == head.seq and done.hash == head.hash:
                continue
            if done is not None and done.seq >= head.seq:
                done = None  # rows replaced or gone since: judge the feed afresh
            checked = self._check_from(author, done)
            if checked.bad is not None and done is not None:
                # `done` may be an entry seen inside a transaction that was rolled back since:
                # judge the whole feed afresh before quarantining anything.
                done = None
                checked = self._check_from(author, None)
            if checked.end is not None:
                self._checked[author] = checked.end
                after = 0 if done is None else done.seq
                out.append(_NewRun(author, after, checked.end.seq, checked.kept))
            elif done is None:
                self._checked.pop(author, None)
            if checked.bad is not None:
                self._quarantine_row(checked.bad)
        for author in [a for a in self._checked if a not in self._heads]:
            del self._checked[author]
        return out

    def _check_from(self, author: bytes, done: Head | None) -> FeedCheck:
        """The feed's rows after `done` checked (FeedCheck), read a row at a time."""
        checked = FeedCheck(author, done)
        # From the feed's first row, whatever its seq column says: a row whose seq a damaged
        # card made 0 or less was read by the views and never checked (an outside verifier).
        cursor = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE author = ? AND seq > ? ORDER BY seq",
            (author, MIN_SEQ_COLUMN if done is None else done.seq),
        )
        try:
            for row in cursor:
                if not checked.add(row):
                    break
        finally:
            cursor.close()
        checked.finish(lambda seq: self._stored_entry(author, seq))
        return checked

    def _stored_entry(self, author: bytes, seq: int) -> Entry | None:
        """The row at (author, seq) parsed, unverified (None: not there, or not an entry)."""
        row = self._db.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq = ?", (author, seq)
        ).fetchone()
        if row is None or type(row[0]) is not bytes:
            return None
        try:
            return parse(row[0], verify=False)
        except Rejected:
            return None

    def _quarantine_row(self, bad: BadRow) -> None:
        self._bad[bad.author] = bad
        log.warning(
            "ledger: quarantined a bad stored row, %s; it and the later entries of its feed "
            "count for nothing and are not served (`gibsey ledger verify`)",
            bad,
        )
        for listener in self._bad_listeners:
            listener(bad)

    def _ensure_checked(self, author: bytes) -> None:
        """Check the stored rows once before relying on a feed this process never looked at."""
        if author in self._heads and author not in self._looked:
            self._check_pending(author)

    def _mark_checked(self, items: Sequence[Entry | ForkProof]) -> None:
        """Entries this store committed were checked on their way in (signed here, or imported
        after every check): they extend their feed's checked prefix without a second look."""
        with self.lock:
            # Each feed's last entry that extends its prefix; the Head is made once per feed
            # (not per entry: a batch of 1,000 appends or imports is mostly one feed).
            ends: dict[bytes, Entry] = {}
            for e in items:
                if isinstance(e, ForkProof):
                    continue
                last = ends.get(e.author)
                if last is not None:
                    extends = e.seq == last.seq + 1 and e.prev == last.hash
                else:
                    extends = self._extends_checked(e)
                if extends:
                    ends[e.author] = e
            for author, e in ends.items():
                self._checked[author] = Head(e.seq, e.hash, e.lamport)

    def bad_rows(self) -> list[BadRow]:
        """The first row of each feed that fails its checks (checking what is new first)."""
        with self.lock:
            self._check_pending()
            return sorted(self._bad.values(), key=lambda b: b.author)

    def on_bad_row(self, listener: BadRowListener) -> None:
        """Call `listener` for each bad row found from now on (in the thread that finds it)."""
        self._bad_listeners.append(listener)

    def _served(self, author: bytes) -> int:
        """The last seq of `author` that passed every check (hold `lock`, after checking)."""
        head = self._checked.get(author)
        return 0 if head is None else head.seq

    # ---- reading ----------------------------------------------------------------------------
    # Everything here returns checked entries only: a bad row and the rest of its feed are
    # neither folded nor served, and the heads are where the checked prefixes end.

    def logged_only(self) -> int:
        """How many entries the entry log holds that the database does not: acknowledged, their
        batch not committed yet (a running node's open batch, a commit the disk refused, or a
        process stopped mid-batch; the next writer to begin stores them)."""
        if self._log is None or self._log.size() == 0:
            return 0
        with self.lock:
            return len(self._log_beyond_heads(self._log)[0])

    def unstored(self, own: bytes | None = None) -> str | None:
        """What `<entry log>.refused` keeps that the ledger does not hold, said in one sentence
        (None: nothing). Each was acknowledged once (the entry log held it), and was set aside
        because it could not be stored: a record before it in its feed was damaged on the card
        (or was refused), so it chains to nothing here. A peer holding them brings them back
        through the mesh; else they are lost, and the node signs its next entries over their
        seqs. An outside tester's one damaged byte set aside 320 acknowledged gifts while
        `ledger verify` said ok. `own`: this node's key, whose feed is named apart."""
        if self._log is None:
            return None
        path = self._log.path + REFUSED_SUFFIX
        raws = EntryLog(path).read()  # (reading opens and closes the file itself)
        lost: dict[bytes, list[int]] = {}
        with self.lock:
            self._check_pending()
            for raw in raws:
                try:
                    e = parse(raw, verify=False)
                except Rejected:
                    continue  # no entry at all: said when it was set aside
                held = self._stored_entry(e.author, e.seq)
                if held is None or held.hash != e.hash:
                    lost.setdefault(e.author, []).append(e.seq)
            heads = {author: self._checked.get(author) for author in lost}
        if not lost:
            return None
        feeds, gap = [], False
        for author, seqs in sorted(lost.items(), key=lambda kv: kv[0] != own):
            whose = "this node's feed" if author == own else f"feed {author.hex()[:16]}"
            head = heads[author]
            first = head.seq + 1 if head is not None and head.seq < min(seqs) else min(seqs)
            gap = gap or first < min(seqs)
            feeds.append(f"{whose} from seq {first} to {max(seqs)}, {len(seqs)} of them kept")
        rest = " (the rest were in the entry log's damaged bytes, copied beside it)" if gap else ""
        return (
            f"entries the entry log held are not in the ledger: {'; '.join(feeds)} in "
            f"{path}{rest}. Each was acknowledged, unless a power cut tore its group's last "
            "write (then none of that group was). A record before them was damaged (the card) "
            "or refused, so they chain to nothing here: a peer that holds them brings them back "
            "(the mesh); else restore ledger.sqlite3* from a backup, or they are lost. Move the "
            "file away once dealt with"
        )

    def heads(self) -> dict[str, int]:
        """Version vector: {author hex: latest seq held} - what the mesh compares with a peer."""
        with self.lock:
            self._check_pending()
            return {a.hex(): h.seq for a, h in self._checked.items()}

    def head(self, author: bytes) -> Head | None:
        with self.lock:
            self._check_pending()
            return self._checked.get(author)

    @property
    def max_lamport(self) -> int:
        return self._max_lamport

    def count(self) -> int:
        return self._count

    def get(self, author: bytes, seq: int) -> Entry | None:
        with self.lock:
            self._check_pending()
            if seq > self._served(author):
                return None
            row = self._db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq = ?", (author, seq)
            ).fetchone()
        return parse(row[0], verify=False) if row else None

    def get_by_hash(self, hash_: bytes) -> Entry | None:
        with self.lock:
            self._check_pending()
            row = self._db.execute(
                "SELECT author, seq, raw FROM entries WHERE hash = ?", (hash_,)
            ).fetchone()
            if row is None or row[1] > self._served(row[0]):
                return None
        return parse(row[2], verify=False)

    def entries_after(self, author: bytes, seq: int, limit: int = 100) -> list[Entry]:
        """Entries of `author` with seq > `seq`, in order, for the mesh: `limit` of them, and
        more (at most MAX_GROUP - 1) to end on a signed entry, so a receiver gets each group
        whole with its head (the served prefix always ends on one). See raws_after."""
        return [parse(raw, verify=False) for raw in self.raws_after(author, seq, limit)]

    def raws_after(
        self, author: bytes, seq: int, limit: int = 100, max_bytes: int | None = None
    ) -> list[bytes]:
        """The wire bytes of what `entries_after` returns, for the mesh to send unchanged; with
        `max_bytes`, also no more entries than fit in it (at least one), read one row at a time
        (a round of a story's ~4 KiB entries was 8 MB read to be cut). Either way they end on a
        signed entry, so up to one group more. Only the entries from the `limit`-th (or the
        one past `max_bytes`) on are parsed: parsing every served entry was most of a serving
        node's work in a catch-up (gibsey bench catchup)."""
        out: list[bytes] = []
        size = 0
        closing = False  # past the bounds: taking the rest of the group to its signed head
        with self.lock:
            self._check_pending()
            rows = self._db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (author, seq, self._served(author), limit + MAX_GROUP - 1),
            )
            try:
                for (raw,) in rows:
                    size += len(raw)
                    closing = closing or len(out) >= limit - 1
                    closing = closing or (max_bytes is not None and bool(out) and size > max_bytes)
                    out.append(raw)
                    if closing and parse(raw, verify=False).signed:
                        break
            finally:
                rows.close()
        return out

    def iter_ordered(self) -> Iterator[Entry]:
        """Every checked entry in fold order (lamport, author, seq), the fork-quarantined ones
        included (the view skips those); never a bad row or what follows it in its feed."""
        with self.lock:
            fresh = {
                (e.author, e.seq): e for run in self._check_pending() for e in run.entries or ()
            }
            tops = {a: h.seq for a, h in self._checked.items()}
        # Read CHUNK_ROWS at a time (the lock held for each read only), never the whole table:
        # what another process stores meanwhile is past `tops`, so left out as before.
        for author, seq, raw in self._ordered_rows():
            if not 0 < seq <= tops.get(author, 0):
                # quarantined, or stored after the check (or a seq column a card damaged to 0
                # or below: checked first, so its feed's check ends there): not folded
                continue
            e = fresh.get((author, seq))
            if e is None:
                try:
                    e = parse(raw, verify=False)  # checked earlier by this process
                except Rejected:
                    continue  # rewritten by another process since: the next check says so
            yield e

    def _ordered_rows(self) -> Iterator[tuple[bytes, int, bytes]]:
        """(author, seq, raw) of every stored row in fold order (lamport, author, seq), unchecked:
        read CHUNK_ROWS at a time, the lock held for each read only."""
        after: tuple[Any, ...] | None = None  # the last row read's (lamport, author, seq)
        while True:
            with self.lock:
                if after is None:
                    rows = self._db.execute(
                        "SELECT lamport, author, seq, raw FROM entries "
                        "ORDER BY lamport, author, seq LIMIT ?",
                        (CHUNK_ROWS,),
                    ).fetchall()
                else:
                    # (lamport >= ?: the Lamport index finds where to start)
                    marks, args = zip(*map(_key_param, after), strict=True)
                    rows = self._db.execute(
                        f"SELECT lamport, author, seq, raw FROM entries WHERE lamport >= "
                        f"{marks[0]} AND (lamport, author, seq) > ({', '.join(marks)}) "
                        "ORDER BY lamport, author, seq LIMIT ?",
                        (args[0], *args, CHUNK_ROWS),
                    ).fetchall()
            for _, author, seq, raw in rows:
                yield author, seq, raw
            if len(rows) < CHUNK_ROWS:
                return
            after = tuple(rows[-1][:3])

    def latest_of_type(self, type_: str) -> dict[bytes, Entry]:
        """Each feed's last checked and trusted entry of `type_` (the membership lists)."""
        with self.lock:
            self._check_pending()
            tops = {a: h.seq for a, h in self._checked.items()}
            forks = dict(self._quarantine)
            rows = self._db.execute(
                "SELECT author, seq, raw FROM entries WHERE type = ? ORDER BY author, seq",
                (type_,),
            ).fetchall()
        out: dict[bytes, Entry] = {}
        for author, seq, raw in rows:
            if not 0 < seq <= tops.get(author, 0) or seq >= forks.get(author, seq + 1):
                continue  # not checked, a bad row's feed, or past a fork point: counts nowhere
            try:
                out[author] = parse(raw, verify=False)
            except Rejected:
                continue  # rewritten by another process since: the next check says so
        return out

    def quarantine(self) -> dict[bytes, int]:
        """{author: first seq no longer trusted}: every entry at or after a fork point."""
        with self.lock:
            return dict(self._quarantine)

    def is_quarantined(self, e: Entry) -> bool:
        start = self._quarantine.get(e.author)
        bad = self._bad.get(e.author)
        return (start is not None and e.seq >= start) or (bad is not None and e.seq >= bad.seq)

    def fork_proofs(self) -> list[ForkProof]:
        """The stored fork proofs that check out, in (author, seq) order. One damaged on disk
        is left out (never served: `verify` names it), so one bad row cannot stop the mesh
        from serving the others."""
        return [p for _, _, p in self.fork_proof_rows() if isinstance(p, ForkProof)]

    def fork_proof_rows(self) -> list[tuple[Any, Any, ForkProof | str]]:
        """Every stored fork proof's (author, seq) as stored (a damaged row's columns may hold
        any type) and the proof, or what is wrong with it, in (author, seq) order."""
        with self.lock:
            rows = self._db.execute(
                "SELECT author, seq, proof FROM forks ORDER BY author, seq"
            ).fetchall()
        return [(author, seq, _checked_proof(author, seq, data)) for author, seq, data in rows]

    # ---- appending to our own feed ------------------------------------------------------------

    def _next_position(self, author: bytes) -> tuple[int, bytes | None]:
        if author in self._quarantine:
            raise LedgerError(
                "this node's own feed is forked (a fork proof against our key is held): an old "
                "backup of ledger.sqlite3 was restored, or node.key was copied to a second node "
                "(a copied data directory), and two signed at one seq. The feed counts for "
                "nothing from the fork on and cannot be extended: give this node a new identity "
                "(move node.key, node_id and the ledger away; it starts as a new node)"
            )
        self._ensure_checked(author)
        bad = self._bad.get(author)
        if bad is not None:
            raise LedgerError(
                f"this node's own feed holds a bad stored row ({bad}): an entry chained after "
                "it would count nowhere; restore ledger.sqlite3 with node.key from a backup"
            )
        behind = self.own_feed_behind(author) or self.own_feed_held()
        if behind:
            raise OwnFeedWaits(behind)
        head = self._heads.get(author)
        return (1, None) if head is None else (head.seq + 1, head.hash)

    def append(
        self,
        key: SigningKey,
        type_: str,
        body: dict[str, Any],
        *,
        wall: int | None = None,
        check: Callable[[], None] | None = None,
        also: Callable[[sqlite3.Connection, Entry], None] | None = None,
    ) -> Entry:
        """Validate, sign and durably store an entry in `key`'s own feed; return it.

        `check` runs under the store lock just before signing (a guard such as "the giver can
        cover this"), so no other append can slip in between the check and the write. `also`
        runs inside the same transaction, so its writes commit atomically with the entry.
        """
        with self._storing(logged=True) as (db, stored):
            if check is not None:
                check()
            e = self._sign_next(key, type_, body, wall)
            self._insert(db, e)
            if also is not None:
                also(db, e)
            stored.append(e)
        self._mark_signed(e.author)
        return e

    def append_many(
        self, key: SigningKey, items: Iterable[tuple[str, dict[str, Any]]]
    ) -> list[Entry]:
        """Append several entries in one transaction: all or none, one fsync.

        They form groups of at most MAX_GROUP entries (format v2) and only each group's last
        entry is signed: one signature per group, not per entry. Our feed's stored head is
        always signed, so each group starts right after a signed entry."""
        out: list[Entry] = []
        self._append_run(key, items, out)
        return out

    def append_stream(
        self, key: SigningKey, items: Iterable[tuple[str, dict[str, Any]]]
    ) -> tuple[Entry | None, int]:
        """`append_many` of any number of entries, none of them held: `items` is consumed (a
        generator may make them as it goes) and written CHUNK_ROWS at a time, in the one
        transaction - all or none, one fsync; an exception `items` raises rolls it all back.
        The listeners are told after the commit, the entries read again a chunk at a time.
        Returns the last entry appended (None if none) and how many were.

        Why: a 42 MB corpus import is ~12,000 entries of ~4 KiB; held as a list (their bodies,
        their bytes, the rows) it was ~150 MB of the import's peak on a 512 MB Pi Zero 2 W."""
        return self._append_run(key, items, None)

    def _append_run(
        self, key: SigningKey, items: Iterable[tuple[str, dict[str, Any]]], out: list[Entry] | None
    ) -> tuple[Entry | None, int]:
        """Append `items` in one transaction; every entry goes to `out` unless it is None (then
        at most KEEP_ROWS are held, for the listeners). Returns the last entry and the count."""
        author = bytes(key.verify_key)
        kept: list[Entry] | None = out if out is not None else []
        first: Entry | None = None
        last: Entry | None = None
        count = after = 0
        with self.lock:
            with self.transaction(logged=True) as db:
                # The feed's position once for the batch, then each entry chains to the one
                # before (the caches follow once, below): ~1 us an entry less than asking the
                # store each time (gibsey bench ledger's append row).
                seq, prev = self._next_position(author)
                after = seq - 1
                lamport = self._max_lamport
                run = run_bytes = 0  # unsigned entries since the last head, and their bytes
                rows: list[StoredRow] = []
                todo = iter(items)
                item = next(todo, None)
                while item is not None:
                    type_, body = item
                    item = next(todo, None)
                    # A head where one more unsigned entry (of any size) could break the bound.
                    head = item is None or run_too_long(run + 1, run_bytes + MAX_ENTRY_BYTES)
                    lamport += 1
                    e = entry_mod.create(
                        key, seq=seq, prev=prev, lamport=lamport, type_=type_, body=body, head=head
                    )
                    run, run_bytes = (0, 0) if head else (run + 1, run_bytes + len(e.raw))
                    seq, prev = seq + 1, e.hash
                    rows.append(_row(e))
                    if kept is not None:
                        if out is not None or len(kept) < KEEP_ROWS:
                            kept.append(e)
                        else:
                            kept = None  # read again for the listeners, after the commit
                    first = first or e
                    last = e
                    count += 1
                    if len(rows) >= CHUNK_ROWS:
                        self._write_rows(db, rows)
                        rows = []
                self._write_rows(db, rows)
                if last is not None:
                    self._advance(last, count)
            if first is not None and last is not None:
                self._mark_run(first, last)
        if last is None:
            return None, 0
        if self._listeners:
            self._tell(self._run_entries(_NewRun(author, after, last.seq, kept)))
        self._mark_signed(author)
        return last, count

    def _write_rows(self, db: sqlite3.Connection, rows: list[StoredRow]) -> None:
        if rows:
            db.executemany(_INSERT, rows)  # one statement: ~3 us/entry less
            self._stored_rows(len(rows), (row[5] for row in rows))

    def _mark_run(self, first: Entry, last: Entry) -> None:
        """A chained run of entries this store committed, `first` to `last` (of one feed), was
        checked on its way in: it extends the feed's checked prefix if `first` does."""
        with self.lock:
            if self._extends_checked(first):
                self._checked[first.author] = Head(last.seq, last.hash, last.lamport)

    def _extends_checked(self, e: Entry) -> bool:
        """Whether `e` is the next entry after its feed's checked prefix (hold `lock`)."""
        done = self._checked.get(e.author)
        if done is None:
            return e.seq == 1
        return e.seq == done.seq + 1 and e.prev == done.hash

    def own_feed_behind(self, author: bytes) -> str | None:
        """Why `author`'s feed (this node's) must not be signed on, if it is behind its mark."""
        mark = self.own_mark
        if mark is None:
            return None
        head = self._heads.get(author)
        seq = head.seq if head else 0
        marked = mark.behind(author, seq)
        if not marked:
            return None
        return (
            f"this node signed its feed up to seq {marked} ({mark.path}), but the ledger holds it "
            f"to seq {seq} only: ledger.sqlite3 was wiped, replaced by an older copy or lost "
            "entries; restore it from a backup (with node.key), or let the mesh bring the feed "
            "back from the gallery's peers. An entry signed now would fork the feed, which then "
            "counts nowhere"
        )

    def own_feed_held(self) -> str | None:
        """Why this node's feed waits for its peers' word before it is signed on, if it does
        (a damaged or torn entry log: ledger/ownfeed.py)."""
        mark = self.own_mark
        held = mark.held() if mark is not None else ""
        if not held or mark is None:
            return None
        return (
            f"this node's own feed is held ({held}): an entry signed now could fork the feed "
            "its peers hold, which then counts nowhere. The node's mesh signs on once every "
            "peer has shown it holds no more of the feed (what they hold comes back), or after "
            f"[mesh] own_feed_confirm_s; `gibsey up` without a mesh, at its start. Remove "
            f"{mark.hold_path} if no peer could hold this feed"
        )

    def hold_own_feed(self, reason: str) -> None:
        """Hold this node's feed for its peers' word (ledger/ownfeed.py), saying `reason`."""
        if self.own_mark is not None:
            self.own_mark.hold(reason)

    def release_own_feed(self, why: str) -> bool:
        """Sign on the own feed again (a hold lifted, said with `why`); False if none held."""
        if self.own_mark is None or not self.own_mark.held():
            return False
        self.own_mark.release()
        log.warning("ledger: this node's own feed is signed on again: %s", why)
        return True

    def mark_own(self, author: bytes) -> None:
        """`author` is this node's key: its feed's head marked now if the mark is behind (a node
        of a release before the mark, whose ledger would otherwise go unguarded until it signs)."""
        self._mark_signed(author, force=True)

    def _mark_signed(self, author: bytes, force: bool = False) -> None:
        """Raise the own feed's mark after `author` signed (at most once a minute, ownfeed.py)."""
        with self.lock:
            self._signed_here.add(author)
        self._mark_heads(force)

    def _mark_heads(self, force: bool) -> None:
        """The heads of the feeds this process signed, marked if due (`force`: now)."""
        if self.own_mark is None:
            return
        with self.lock:
            heads = {a: self._heads[a].seq for a in self._signed_here if a in self._heads}
        if heads:
            self.own_mark.signed(heads, force=force)

    def _sign_next(
        self,
        key: SigningKey,
        type_: str,
        body: dict[str, Any],
        wall: int | None,
        *,
        head: bool = True,
    ) -> Entry:
        author = bytes(key.verify_key)
        seq, prev = self._next_position(author)
        return entry_mod.create(
            key,
            seq=seq,
            prev=prev,
            lamport=self._max_lamport + 1,
            type_=type_,
            body=body,
            wall=wall,
            head=head,
        )

    def _insert(self, db: sqlite3.Connection, e: Entry) -> None:
        db.execute(_INSERT, _row(e))
        self._stored_rows(1, (e.raw,))
        self._advance(e)

    def _stored_rows(self, count: int, raws: Iterable[bytes]) -> None:
        """Count entry rows this transaction wrote, and keep their bytes for the entry log
        while it may still go there (not in a store that never logs, nor past LOG_MAX_ROWS:
        an import of a peer's history is not copied for nothing)."""
        self._tx_rows += count
        if self.commit_every_s and self._tx_rows <= LOG_MAX_ROWS:
            self._tx_log.extend(raws)

    def _advance(self, e: Entry, count: int = 1) -> None:
        """Caches after storing `e`, the last of `count` new rows of its feed (rolled back with
        the transaction by _load_caches)."""
        self._heads[e.author] = Head(e.seq, e.hash, e.lamport)
        self._max_lamport = max(self._max_lamport, e.lamport)
        self._count += count

    # ---- importing foreign entries ------------------------------------------------------------

    def import_entry(self, item: bytes | Entry) -> ImportResult:
        """Check and store an entry from a peer; raise Rejected (store unchanged) if bad. An
        unsigned entry is held (PENDING), stored once its group's signed head arrives."""
        [result] = self.import_many([item])
        if isinstance(result, Rejected):
            raise result
        return result

    def import_many(self, items: Iterable[bytes | Entry]) -> list[ImportResult | Rejected]:
        """Import a batch in one transaction; each item gets a result or its rejection.

        Items are applied in the given order, so a feed's entries should come in seq order.
        A rejected item changes nothing; the accepted ones commit together. An unsigned entry
        (format v2) is PENDING: held in memory, not stored, until the signed head of its group
        arrives (in this batch or a later one); the head's result is then the group's (the
        entries it vouches for are stored with it, and told to listeners)."""
        raws = [item.raw if isinstance(item, Entry) else item for item in items]
        parsed = parsepool.parsed(raws, self._parse_batch, worker=self.parse_process)
        with closing(parsed), self._storing(logged=True) as (db, stored):
            try:
                out = self._import_parsed(db, parsed, stored)
            finally:
                self._staged.clear()  # (written, or rolled back with the transaction)
        return out

    def _import_parsed(
        self,
        db: sqlite3.Connection,
        parsed: Iterable[Entry | Rejected],
        stored: list[Entry | ForkProof],
    ) -> list[ImportResult | Rejected]:
        """Import parsed (and verified) items in this transaction: each one's result or its
        rejection; what was stored goes to `stored` (hold `lock`)."""
        out: list[ImportResult | Rejected] = []
        for p in parsed:
            if isinstance(p, Rejected):
                out.append(p)
                continue
            try:
                out.append(self._import_one(db, p, stored) if p.signed else self._hold(p))
            except Rejected as exc:
                out.append(_as_value(exc))
        self._flush(db)
        return out

    def _flush(self, db: sqlite3.Connection) -> None:
        """Write the rows staged by this import (before reading the table, and at its end)."""
        if self._staged:
            db.executemany(_INSERT, self._staged)
            self._stored_rows(len(self._staged), (row[5] for row in self._staged))
            self._staged.clear()

    def _parse_batch(self, items: Sequence[bytes | Entry]) -> list[Entry | Rejected]:
        """Parse every item, verifying the signed ones on `verify_threads` threads (outside
        the lock). An unsigned entry has no signature: its group's head vouches for it."""
        parsed: list[Entry | Rejected] = []
        for item in items:
            try:
                parsed.append(parse(item.raw if isinstance(item, Entry) else item, verify=False))
            except Rejected as exc:
                parsed.append(_as_value(exc))
        todo = [p for p in parsed if isinstance(p, Entry) and p.signed]
        if self.verify_threads > 1 and len(todo) >= 64:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.verify_threads, "ledger-verify")
            size = -(-len(todo) // (self.verify_threads * 4))
            chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
            ok = [v for chunk in self._pool.map(_verify_chunk, chunks) for v in chunk]
        else:
            ok = _verify_chunk(todo)
        bad = {id(e) for e, good in zip(todo, ok, strict=True) if not good}
        return [
            Rejected(RejectReason.BAD_SIGNATURE, f"seq {p.seq} of {p.author_hex[:16]}")
            if isinstance(p, Entry) and id(p) in bad
            else p
            for p in parsed
        ]

    def _hold(self, e: Entry) -> ImportResult:
        """Keep an unsigned entry pending until the signed head of its group arrives: one run
        of chained entries per feed, at most MAX_GROUP - 1 long (hold `lock`)."""
        run = self._pending.pop(e.author, _Run())
        if run and not _continues(run[-1], e):
            run = _Run()  # not the same run (sent again, or another branch): start over from here
        if run_too_long(len(run) + 1, run.raw_bytes + len(e.raw)):
            raise Rejected(
                RejectReason.GROUP_TOO_LONG,
                f"seq {e.seq} of {e.author_hex[:16]}: {len(run) + 1} unsigned entries in a row, "
                f"a group's head vouches for at most {MAX_GROUP - 1} (and 32 KiB of them)",
            )
        run.add(e)
        self._pending[e.author] = run  # (re-)inserted last: the most recently extended
        total = sum(len(r) for r in self._pending.values())
        while total > MAX_PENDING_ENTRIES:
            oldest = next(iter(self._pending))
            total -= len(self._pending.pop(oldest))
        return ImportResult(ImportStatus.PENDING, e)

    def pending(self) -> int:
        """How many unsigned entries are held waiting for their group's signed head."""
        with self.lock:
            return sum(len(r) for r in self._pending.values())

    def _import_one(
        self, db: sqlite3.Connection, head: Entry, stored: list[Entry | ForkProof]
    ) -> ImportResult:
        """A signed, verified entry and the pending run it vouches for (the run's last entry
        is its `prev`): chain-check and store them in seq order; the result is the head's, or
        the fork found on the way (hold `lock`)."""
        run = self._pending.pop(head.author, _Run())
        if run and not _continues(run[-1], head):
            if run[0].seq > head.seq:
                self._pending[head.author] = run  # a later group, still waiting for its head
            run = _Run()
        group = [*run, head]
        # Check what is stored of this feed now: looked at between the group's inserts, the
        # feed would end on an unsigned entry of this group and be judged headless.
        self._flush(db)
        self._ensure_checked(head.author)
        self._looked.add(head.author)
        # The run chains with rising Lamport clocks (_continues), so once one entry of the group
        # is appended every later one is too: never an unsigned entry stored without its head.
        appended: list[Entry] = []
        result: ImportResult | None = None
        for i, e in enumerate(group):
            result = self._import_checked(db, e, group[i + 1 :])
            if result.status is ImportStatus.APPENDED:
                appended.append(e)
            elif result.status is ImportStatus.FORK:
                assert result.proof is not None
                stored.append(result.proof)
                return result  # the rest of the group is past the fork point: quarantined
        assert result is not None
        stored.extend(appended)
        if result.status is ImportStatus.APPENDED and len(appended) > 1:
            result = ImportResult(result.status, result.entry, earlier=tuple(appended[:-1]))
        return result

    def _import_checked(
        self, db: sqlite3.Connection, e: Entry, chain: Sequence[Entry] = ()
    ) -> ImportResult:
        """Chain checks for a parsed entry, vouched for by its signature or by `chain` (the
        entries after it up to its group's verified head); every raise precedes any write."""
        self._ensure_checked(e.author)
        bad = self._bad.get(e.author)
        if bad is not None and e.seq >= bad.seq:
            # Our row there is damaged: it proves nothing against its author (no fork proof),
            # and a peer that sends the good entry did nothing wrong (not a forgery reason).
            raise Rejected(
                RejectReason.HELD_DAMAGED,
                f"seq {e.seq}: we hold a bad row at seq {bad.seq} of {e.author_hex[:16]} "
                f"({bad.problem}); that feed is quarantined here from there on",
            )
        head = self._heads.get(e.author)
        held = 0 if head is None else head.seq
        if e.seq <= held:
            self._flush(db)
            row = db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq = ?", (e.author, e.seq)
            ).fetchone()
            ours = parse(row[0], verify=False)
            if ours.hash == e.hash:
                return ImportResult(ImportStatus.DUPLICATE, ours)
            proof = forkproof.make(ours, e, self._chain_after(db, ours), chain)
            self._store_proof(db, proof)
            return ImportResult(ImportStatus.FORK, e, proof)
        start = self._quarantine.get(e.author)
        if start is not None:
            raise Rejected(
                RejectReason.AUTHOR_QUARANTINED,
                f"{e.author_hex[:16]} equivocated at seq {start}; its later entries are refused",
            )
        if e.seq != held + 1:
            raise Rejected(RejectReason.SKIPPED_SEQ, f"got seq {e.seq}, we hold up to {held}")
        if head is not None:
            if e.prev != head.hash:
                raise Rejected(
                    RejectReason.WRONG_PREV,
                    f"seq {e.seq} prev {e.prev.hex()[:16] if e.prev else None}, "
                    f"we hold {head.hash.hex()[:16]} at seq {head.seq}",
                )
            if e.lamport <= head.lamport:
                raise Rejected(
                    RejectReason.LAMPORT_REGRESSION,
                    f"seq {e.seq} lamport {e.lamport} <= {head.lamport} of seq {head.seq}",
                )
        self._staged.append(_row(e))
        self._advance(e)
        return ImportResult(ImportStatus.APPENDED, e)

    def _chain_after(self, db: sqlite3.Connection, e: Entry) -> list[Entry]:
        """Our stored entries after `e` up to the signed head that vouches for it (empty if
        `e` is signed): our side of a fork proof."""
        if e.signed:
            return []
        rows = db.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?",
            (e.author, e.seq, MAX_GROUP - 1),
        ).fetchall()
        chain: list[Entry] = []
        for (raw,) in rows:
            chain.append(parse(raw, verify=False))
            if chain[-1].signed:
                return chain
        raise Rejected(
            RejectReason.HELD_DAMAGED,
            f"seq {e.seq} of {e.author_hex[:16]}: our entry there has no signed head stored",
        )

    # ---- fork proofs ------------------------------------------------------------------------

    def _store_proof(self, db: sqlite3.Connection, proof: ForkProof) -> bool:
        cur = db.execute(
            "INSERT OR IGNORE INTO forks (author, seq, proof) VALUES (?,?,?)",
            (proof.author, proof.seq, proof.to_bytes()),
        )
        if cur.rowcount:
            self._fork_keys.add((proof.author, proof.seq))
            old = self._quarantine.get(proof.author)
            self._quarantine[proof.author] = proof.seq if old is None else min(old, proof.seq)
        return bool(cur.rowcount)

    def import_fork_proof(self, data: bytes) -> bool:
        """Verify a peer's fork proof (both signatures) and keep it; True if it was new."""
        proof = forkproof.from_bytes(data)
        with self._storing() as (db, stored):
            new = self._store_proof(db, proof)
            if new:
                stored.append(proof)
        return new

    # ---- verification -----------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Re-check every stored row from scratch - bytes, every signature, index columns,
        chain, groups - and every fork proof; report the first bad row of each feed. The rows
        are read a row at a time (the lock held throughout), never the whole table at once."""
        bad: list[BadRow] = []
        feeds = entries = 0
        with self.lock:
            proofs = self._db.execute("SELECT author, seq, proof FROM forks").fetchall()
            cursor = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY author, seq")
            try:
                counted = _Counting(cursor)
                for _, rows in itertools.groupby(counted, key=lambda row: row[0]):
                    feeds += 1
                    found = _verify_feed(rows)
                    if found is not None:
                        bad.append(found)
                entries = counted.count
            finally:
                cursor.close()
        bad += _bad_proofs(proofs)
        if not bad:
            return VerifyReport(entries, feeds)
        first = bad[0]
        return VerifyReport(entries, feeds, first.author, first.seq, first.problem, tuple(bad))


class _Counting(Iterator[StoredRow]):
    """The rows of `rows`, counted as they are read."""

    def __init__(self, rows: Iterable[StoredRow]) -> None:
        self._rows = iter(rows)
        self.count = 0

    def __next__(self) -> StoredRow:
        row = next(self._rows)
        self.count += 1
        return row


def _verify_feed(rows: Iterable[StoredRow]) -> BadRow | None:
    """The first bad row of one feed's rows (seq order), every signature checked."""
    last: Head | None = None
    unsigned: list[Entry] = []  # since the last signed entry
    size = 0  # their bytes
    for row in rows:
        checked = check_row(row, last, signature=True)
        if isinstance(checked, str):
            if unsigned:  # their head is this bad row or after it: nothing vouches for them
                first = unsigned[0]  # where the read path's quarantine starts too
                return BadRow(first.author, first.seq, f"{NO_HEAD} (seq {row[1]}: {checked})")
            return BadRow(row[0], row[1], checked)
        if checked.signed:
            unsigned.clear()
            size = 0
        elif run_too_long(len(unsigned) + 1, size + len(checked.raw)):
            first = unsigned[0] if unsigned else checked  # the first entry nothing vouches for
            return BadRow(first.author, first.seq, TOO_MANY_UNSIGNED)
        else:
            unsigned.append(checked)
            size += len(checked.raw)
        last = Head(checked.seq, checked.hash, checked.lamport)
    if unsigned:
        return BadRow(unsigned[0].author, unsigned[0].seq, NO_HEAD)
    return None


def _bad_proofs(proofs: list[tuple[bytes, int, bytes]]) -> list[BadRow]:
    checked = ((author, seq, _checked_proof(author, seq, data)) for author, seq, data in proofs)
    return [BadRow(a, seq, why) for a, seq, why in checked if isinstance(why, str)]


def _checked_proof(author: Any, seq: Any, data: Any) -> ForkProof | str:
    """A stored fork proof row's proof, or what is wrong with it (its bytes refused, or its
    index columns naming another author or seq)."""
    if type(data) is not bytes:
        return f"fork proof: stored as {type(data).__name__}, not bytes"
    try:
        proof = forkproof.from_bytes(data)
    except Rejected as exc:
        return f"fork proof: {exc}"
    if proof.author != author or proof.seq != seq:
        return "fork proof index mismatch"
    return proof


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _key_param(value: Any) -> tuple[str, Any]:
    """(SQL, argument) that stand for a key column's `value` as read: a damaged row's text
    that is no UTF-8 (read by _lenient_text) is bound as its bytes, cast back to text, so the
    row compares as stored (binding the str itself would raise)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "CAST(? AS TEXT)", value.encode("utf-8", "surrogateescape")
    return "?", value


def check_row(row: StoredRow, last: Head | None, *, signature: bool) -> Entry | str:
    """`row` as an entry if it passes every check that needs no later entry - its bytes (the
    body rules and canonical form; its signature too if `signature`), its index columns, its
    place in the chain after `last` (None: the feed's first row) - else what is wrong."""
    author, seq, hash_, lamport, type_, raw = row
    # A damaged row: text (or a number) where bytes go.
    for name, value in (("author", author), ("hash", hash_), ("entry's bytes", raw)):
        if type(value) is not bytes:
            return f"the {name} column is stored as {type(value).__name__}, not bytes"
    try:
        e = parse(raw, verify=signature)
    except Rejected as exc:
        return str(exc)
    stored = (author, seq, hash_, lamport, type_)
    signed = (e.author, e.seq, e.hash, e.lamport, e.type)
    names = ("author", "seq", "hash", "lamport", "type")
    wrong = [n for n, x, y in zip(names, stored, signed, strict=True) if x != y]
    if wrong:
        return f"index columns disagree with the entry bytes: {', '.join(wrong)}"
    if last is None:
        return e if seq == 1 else f"feed starts at seq {seq}, not 1"
    if seq != last.seq + 1:
        return f"gap after seq {last.seq}"
    if e.prev != last.hash:
        return "prev is not the hash of the previous entry"
    if e.lamport <= last.lamport:
        return "lamport does not increase"
    return e


class FeedCheck:
    """One feed's rows checked one at a time (in seq order, continuing after `start`, a signed
    entry or None): where the entries that pass every check end, and the first row that does
    not (None if all do). `add` each row while it returns True, then `finish`.

    Signatures: only the last passing signed entry's is verified (walking back past any that
    fail, and past unsigned entries no signed head follows). Each entry's hash is the next
    one's `prev`, so the author's signature over the last covers every byte of those before
    it: a row changed on disk breaks the chain or that signature, and a feed is checked for
    one signature instead of one per entry. `verify()` still checks every signature.

    Memory: the entries are not held (a feed may be a whole story import, tens of MB), but
    the first `keep` of them (for the listeners), the last one, and the seq and hash of each
    signed one (40 bytes each: a walk back reads an earlier head again from the table)."""

    def __init__(self, author: bytes, start: Head | None, keep: int = KEEP_ROWS) -> None:
        self.author = author
        self.start = start
        self.end: Head | None = None  # the last good entry of this check (None: none)
        self.bad: BadRow | None = None
        self.kept: list[Entry] | None = []  # the good entries, while at most `keep`
        self._keep = keep
        self._last: Entry | None = None
        self._prev = start  # the last good entry's, for the next row's chain checks
        self._unsigned = self._size = 0  # entries in a row since the last signed one, bytes
        self._signed_seqs = array("q")
        self._signed_hashes = bytearray()

    def add(self, row: StoredRow) -> bool:
        """Check the next row; False once one fails (`bad` says which and why)."""
        checked = check_row(row, self._prev, signature=False)
        if isinstance(checked, str) or checked.signed:
            self._unsigned = self._size = 0
        else:
            self._unsigned, self._size = self._unsigned + 1, self._size + len(checked.raw)
        if isinstance(checked, str) or run_too_long(self._unsigned, self._size):
            problem = checked if isinstance(checked, str) else TOO_MANY_UNSIGNED
            self.bad = BadRow(row[0], row[1], problem)
            return False
        if checked.signed:
            self._signed_seqs.append(checked.seq)
            self._signed_hashes += checked.hash
        if self.kept is not None:
            if len(self.kept) < self._keep:
                self.kept.append(checked)
            else:
                self.kept = None  # too many to hold: read again when they are wanted
        self._last = checked
        self._prev = Head(checked.seq, checked.hash, checked.lamport)
        return True

    def finish(self, stored: Callable[[int], Entry | None]) -> None:
        """Walk back from the last good entry to the last signed one whose signature verifies
        (`stored(seq)`: that row of the feed, read again); what follows it is bad."""
        last = self._last
        if last is None:
            return
        i = len(self._signed_seqs) - 1
        end: Entry | None = None
        while i >= 0:
            seq, digest = self._signed_seqs[i], bytes(self._signed_hashes[32 * i : 32 * i + 32])
            e = last if seq == last.seq else stored(seq)
            if e is not None and e.hash == digest and verify_signature(e):
                end = e
                break
            i -= 1
        if end is not None and end.seq == last.seq:
            self.end = Head(end.seq, end.hash, end.lamport)
            return
        # Everything after `end` is dropped; the first of it is the bad row.
        before = end if end is not None else self.start
        first = 1 if before is None else before.seq + 1
        signed_after = i + 1 < len(self._signed_seqs)  # a signed entry after `end` failed
        if signed_after and self._signed_seqs[i + 1] == first:
            problem = f"{RejectReason.BAD_SIGNATURE.value}: not its author's"
        else:  # the run that broke the bound, or one that no head ends
            too_many = self.bad is not None and self.bad.problem == TOO_MANY_UNSIGNED
            problem = TOO_MANY_UNSIGNED if too_many and not signed_after else NO_HEAD
        self.bad = BadRow(self.author, first, problem)
        if end is None:
            self.kept = [] if self.kept is not None else None
            return
        self.end = Head(end.seq, end.hash, end.lamport)
        if self.kept is not None:
            self.kept = [e for e in self.kept if e.seq <= end.seq]


MIN_SEQ_COLUMN = -(2**63)  # below any seq column SQLite can hold
NO_HEAD = "an unsigned entry with no signed head after it: nothing vouches for it"
TOO_MANY_UNSIGNED = (
    f"more than {MAX_GROUP - 1} unsigned entries (or 32 KiB of them) in a row: a group's bound"
)


def _as_value(exc: Rejected) -> Rejected:
    """A rejection kept as a result, without its traceback: the traceback holds the frame
    that caught it, whose list of results holds the rejection, a cycle that kept a whole
    import's parsed entries (~4x their bytes) alive until the collector next ran. A mesh
    catch-up with a few rejected entries per batch held three or four batches so."""
    exc.__traceback__ = None
    exc.__context__ = None
    return exc


def _continues(last: Entry, e: Entry) -> bool:
    """Whether `e` is the next entry of `last`'s feed (seq, prev and a rising Lamport clock)."""
    return e.seq == last.seq + 1 and e.prev == last.hash and e.lamport > last.lamport


def _verify_chunk(entries: list[Entry]) -> list[bool]:
    return [verify_signature(e) for e in entries]
