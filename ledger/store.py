"""SQLite storage of every feed this node holds, with the checks that keep them trustworthy.

One file, `ledger.sqlite3`, in the data directory. WAL mode with `synchronous=FULL`: each commit
fsyncs the WAL before returning, so an `append` that returned survives `kill -9` *and* a power
cut (NORMAL would survive kill -9 only - the design says the power is cut every night). Batched
APIs (`append_many`, `import_many`) pay that fsync once per batch.

Everything that changes the store happens under one lock and inside one transaction, after every
check has passed; a rejected import raises before the first write, so nothing changes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from nacl.signing import SigningKey

from gibsey.core.storage import DiskHealth, StorageError, open_sqlite, sqlite_refusal

from . import entry as entry_mod
from . import forkproof
from .entry import Entry, parse, verify_signature
from .errors import LedgerError, Rejected, RejectReason
from .forkproof import ForkProof

DB_FILENAME = "ledger.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    author  BLOB    NOT NULL,
    seq     INTEGER NOT NULL,
    hash    BLOB    NOT NULL UNIQUE,
    lamport INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    raw     BLOB    NOT NULL,
    PRIMARY KEY (author, seq)
);
-- The fold order of every view: (lamport, author, seq).
CREATE INDEX IF NOT EXISTS entries_order ON entries (lamport, author, seq);
CREATE TABLE IF NOT EXISTS forks (
    author BLOB    NOT NULL,
    seq    INTEGER NOT NULL,
    proof  BLOB    NOT NULL,
    PRIMARY KEY (author, seq)
);
"""


_INSERT = "INSERT INTO entries (author, seq, hash, lamport, type, raw) VALUES (?,?,?,?,?,?)"


def _row(e: Entry) -> tuple[bytes, int, bytes, int, str, bytes]:
    return (e.author, e.seq, e.hash, e.lamport, e.type, e.raw)


class ImportStatus(StrEnum):
    APPENDED = "appended"  # new entry, now the head of its feed
    DUPLICATE = "duplicate"  # we already held exactly this entry; nothing changed
    FORK = "fork"  # a second, different entry at a seq we hold: fork proof stored


@dataclass(frozen=True, slots=True)
class ImportResult:
    status: ImportStatus
    entry: Entry
    proof: ForkProof | None = None


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes
    lamport: int


@dataclass(frozen=True, slots=True)
class VerifyReport:
    entries: int
    feeds: int
    bad_author: bytes | None = None
    bad_seq: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.bad_author is None and not self.problem


Listener = Callable[[Entry | ForkProof], None]


class _Caches(NamedTuple):
    """What a write transaction may change in the caches (put back if it fails)."""

    heads: dict[bytes, Head]
    max_lamport: int
    entries: int
    quarantine: dict[bytes, int]
    fork_keys: set[tuple[bytes, int]]


class Store:
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        verify_threads: int | None = None,
        disk: DiskHealth | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"synchronous={synchronous!r}")
        self.path = str(path)
        # Told of every refused and every working write (the node shares one with its other
        # writers, to say "disk full" once per episode).
        self.disk = disk if disk is not None else DiskHealth()
        # Ed25519 verification releases the GIL (PyNaCl calls libsodium through cffi), so a
        # batch import verifies on several cores; a Pi 4/5 has four.
        self.verify_threads = verify_threads or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self.lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
        # what the code says. check_same_thread=False: the lock serialises all use.
        self._db = open_sqlite(self.path, f"the ledger {self.path}", self._setup(synchronous))
        self._listeners: list[Listener] = []
        self._in_tx = False
        self._load_caches()
        # Changes only when another connection commits (see refresh()).
        self._data_version: int = self._db.execute("PRAGMA data_version").fetchone()[0]

    @staticmethod
    def _setup(synchronous: str) -> Callable[[sqlite3.Connection], None]:
        def setup(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(_SCHEMA)
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) under the store lock.

        Other parts of the ledger (governance's executions table) write in the same
        transaction as an append by nesting inside this.
        """
        with self.lock:
            if self._in_tx:
                yield self._db
                return
            self._begin()
            self._in_tx = True
            before: _Caches | None = None
            changes = self._db.total_changes
            try:
                # Another process (the ledger or story CLI beside a running node) may have
                # appended to this feed since our caches were read: catch up under the write
                # lock, or we would sign a second entry at a seq that is already taken.
                caught_up = self._catch_up()
                if caught_up:
                    self._notify(caught_up)
                before = self._caches()
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._abandon(before)
                refused = self._refused(exc)
                if refused is None:
                    raise
                raise refused from exc
            finally:
                self._in_tx = False
            if self._db.total_changes != changes:
                self.disk.wrote()

    def _begin(self) -> None:
        """BEGIN IMMEDIATE (first ending a transaction a failing disk left open)."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            refused = self._refused(exc)
            if refused is None:
                raise
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
        """Call `listener` after each committed new entry or fork proof (in commit order)."""
        self._listeners.append(listener)

    def _notify(self, items: Sequence[Entry | ForkProof]) -> None:
        for item in items:
            for listener in self._listeners:
                listener(item)

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
        self._notify(new)
        return len(new)

    def _catch_up(self) -> list[Entry | ForkProof]:
        """Reload the caches if another connection committed; what it added (hold `lock`)."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version == self._data_version:
            return []
        self._data_version = version
        old_heads = {a: h.seq for a, h in self._heads.items()}
        old_forks = set(self._fork_keys)
        self._load_caches()
        new: list[Entry | ForkProof] = []
        for author, head in self._heads.items():
            held = old_heads.get(author, 0)
            if head.seq > held:
                rows = self._db.execute(
                    "SELECT raw FROM entries WHERE author = ? AND seq > ? ORDER BY seq",
                    (author, held),
                ).fetchall()
                new.extend(parse(r[0], verify=False) for r in rows)
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

    # ---- reading ----------------------------------------------------------------------------

    def heads(self) -> dict[str, int]:
        """Version vector: {author hex: latest seq held} - what the mesh compares with a peer."""
        with self.lock:
            return {a.hex(): h.seq for a, h in self._heads.items()}

    def head(self, author: bytes) -> Head | None:
        with self.lock:
            return self._heads.get(author)

    @property
    def max_lamport(self) -> int:
        return self._max_lamport

    def count(self) -> int:
        return self._count

    def get(self, author: bytes, seq: int) -> Entry | None:
        with self.lock:
            row = self._db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq = ?", (author, seq)
            ).fetchone()
        return parse(row[0], verify=False) if row else None

    def get_by_hash(self, hash_: bytes) -> Entry | None:
        with self.lock:
            row = self._db.execute("SELECT raw FROM entries WHERE hash = ?", (hash_,)).fetchone()
        return parse(row[0], verify=False) if row else None

    def entries_after(self, author: bytes, seq: int, limit: int = 100) -> list[Entry]:
        """Entries of `author` with seq > `seq`, in order, at most `limit` (for the mesh)."""
        with self.lock:
            rows = self._db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?",
                (author, seq, limit),
            ).fetchall()
        return [parse(r[0], verify=False) for r in rows]

    def iter_ordered(self) -> Iterator[Entry]:
        """Every entry in fold order (lamport, author, seq), quarantined ones included."""
        with self.lock:
            rows = self._db.execute(
                "SELECT raw FROM entries ORDER BY lamport, author, seq"
            ).fetchall()
        for (raw,) in rows:
            yield parse(raw, verify=False)

    def quarantine(self) -> dict[bytes, int]:
        """{author: first seq no longer trusted}: every entry at or after a fork point."""
        with self.lock:
            return dict(self._quarantine)

    def is_quarantined(self, e: Entry) -> bool:
        start = self._quarantine.get(e.author)
        return start is not None and e.seq >= start

    def fork_proofs(self) -> list[ForkProof]:
        with self.lock:
            rows = self._db.execute("SELECT proof FROM forks ORDER BY author, seq").fetchall()
        return [forkproof.from_bytes(r[0]) for r in rows]

    # ---- appending to our own feed ------------------------------------------------------------

    def _next_position(self, author: bytes) -> tuple[int, bytes | None]:
        if author in self._quarantine:
            raise LedgerError(
                "this node's own feed is forked (a fork proof against our key is held) - "
                "usually an old backup was restored; the feed cannot be extended safely"
            )
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
        with self.transaction() as db:
            if check is not None:
                check()
            e = self._sign_next(key, type_, body, wall)
            self._insert(db, e)
            if also is not None:
                also(db, e)
        self._notify([e])
        return e

    def append_many(
        self, key: SigningKey, items: Iterable[tuple[str, dict[str, Any]]]
    ) -> list[Entry]:
        """Append several entries in one transaction: all or none, one fsync."""
        out: list[Entry] = []
        with self.transaction() as db:
            for type_, body in items:
                e = self._sign_next(key, type_, body, None)
                self._advance(e)  # the next entry chains to this one
                out.append(e)
            db.executemany(_INSERT, [_row(e) for e in out])  # one statement: ~3 us/entry less
        self._notify(out)
        return out

    def _sign_next(
        self, key: SigningKey, type_: str, body: dict[str, Any], wall: int | None
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
        )

    def _insert(self, db: sqlite3.Connection, e: Entry) -> None:
        db.execute(_INSERT, _row(e))
        self._advance(e)

    def _advance(self, e: Entry) -> None:
        """Caches after storing `e` (rolled back with the transaction by _load_caches)."""
        self._heads[e.author] = Head(e.seq, e.hash, e.lamport)
        self._max_lamport = max(self._max_lamport, e.lamport)
        self._count += 1

    # ---- importing foreign entries ------------------------------------------------------------

    def import_entry(self, item: bytes | Entry) -> ImportResult:
        """Check and store an entry from a peer; raise Rejected (store unchanged) if bad."""
        e = parse(item.raw if isinstance(item, Entry) else item)  # signature always re-checked
        with self.transaction() as db:
            result = self._import_checked(db, e)
        if result.status is not ImportStatus.DUPLICATE:
            self._notify([result.proof or result.entry])
        return result

    def import_many(self, items: Iterable[bytes | Entry]) -> list[ImportResult | Rejected]:
        """Import a batch in one transaction; each item gets a result or its rejection.

        Items are applied in the given order, so a feed's entries should come in seq order.
        A rejected item changes nothing; the accepted ones commit together.
        """
        out: list[ImportResult | Rejected] = []
        parsed = self._parse_batch(list(items))
        with self.transaction() as db:
            for p in parsed:
                if isinstance(p, Rejected):
                    out.append(p)
                    continue
                try:
                    out.append(self._import_checked(db, p))
                except Rejected as exc:
                    out.append(exc)
        self._notify(
            [
                r.proof or r.entry
                for r in out
                if isinstance(r, ImportResult) and r.status is not ImportStatus.DUPLICATE
            ]
        )
        return out

    def _parse_batch(self, items: list[bytes | Entry]) -> list[Entry | Rejected]:
        """Parse every item, verifying signatures on `verify_threads` threads (outside the lock)."""
        parsed: list[Entry | Rejected] = []
        for item in items:
            try:
                parsed.append(parse(item.raw if isinstance(item, Entry) else item, verify=False))
            except Rejected as exc:
                parsed.append(exc)
        todo = [p for p in parsed if isinstance(p, Entry)]
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

    def _import_checked(self, db: sqlite3.Connection, e: Entry) -> ImportResult:
        """Chain checks for a parsed, signature-verified entry; every raise precedes any write."""
        head = self._heads.get(e.author)
        held = 0 if head is None else head.seq
        if e.seq <= held:
            row = db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq = ?", (e.author, e.seq)
            ).fetchone()
            ours = parse(row[0], verify=False)
            if ours.hash == e.hash:
                return ImportResult(ImportStatus.DUPLICATE, ours)
            proof = forkproof.make(ours, e)
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
        self._insert(db, e)
        return ImportResult(ImportStatus.APPENDED, e)

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
        with self.transaction() as db:
            new = self._store_proof(db, proof)
        if new:
            self._notify([proof])
        return new

    # ---- verification -----------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Re-check every stored chain and signature from scratch; report the first bad entry."""
        with self.lock:
            rows = self._db.execute(
                "SELECT author, seq, hash, lamport, raw FROM entries ORDER BY author, seq"
            ).fetchall()
            proofs = self._db.execute("SELECT author, seq, proof FROM forks").fetchall()
        feeds = 0
        last: tuple[bytes, int, bytes, int] | None = None  # author, seq, hash, lamport
        for author, seq, hash_, lamport, raw in rows:
            try:
                e = parse(raw)  # full checks, signature included
            except Rejected as exc:
                return VerifyReport(len(rows), feeds, author, seq, str(exc))
            problem = ""
            if e.author != author or e.seq != seq or e.hash != hash_ or e.lamport != lamport:
                problem = "index columns disagree with the entry bytes"
            elif last is None or last[0] != author:
                feeds += 1
                if seq != 1:
                    problem = f"feed starts at seq {seq}, not 1"
            elif seq != last[1] + 1:
                problem = f"gap after seq {last[1]}"
            elif e.prev != last[2]:
                problem = "prev is not the hash of the previous entry"
            elif lamport <= last[3]:
                problem = "lamport does not increase"
            if problem:
                return VerifyReport(len(rows), feeds, author, seq, problem)
            last = (author, seq, hash_, lamport)
        for author, seq, data in proofs:
            try:
                proof = forkproof.from_bytes(data)
            except Rejected as exc:
                return VerifyReport(len(rows), feeds, author, seq, f"fork proof: {exc}")
            if proof.author != author or proof.seq != seq:
                return VerifyReport(len(rows), feeds, author, seq, "fork proof index mismatch")
        return VerifyReport(len(rows), feeds)


def _verify_chunk(entries: list[Entry]) -> list[bool]:
    return [verify_signature(e) for e in entries]
