"""The story graph: a SQLite view folded from the ledger, alike on all nodes holding the same feeds.

`StoryGraph.sync(ledger)` folds every ledger entry in the ledger's total order (lamport, author,
seq), skipping quarantined ones, into `story.sqlite3`:

- `story-object` parts are reassembled per author; a complete object whose hash checks becomes a
  page version or a commit (a commit must name known parents and known versions of its pages);
- `story-ref` entries create or advance branches (compare-and-swap on `old`, fast-forward only;
  the canon branch `main` can be created once but never advanced this way);
- the vote that decides a narrative-merge hearing as passed (per the ledger's governance fold)
  moves the hearing's branch to the proposed merge commit - if that branch still stands where the
  merge commit's first parent says; otherwise the hearing is `stale` and nothing moves.

Nothing here reads a clock or the arrival order, so the result is a function of the feeds held.
The view is incremental: entries sorting after the last folded one are folded in; anything else
(a late entry sorting earlier, a new fork proof) rebuilds it from scratch in one transaction.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gibsey.core.storage import DiskHealth, moved_aside, open_sqlite, sqlite_refusal
from gibsey.ledger.entry import Entry, parse
from gibsey.ledger.governance import Governance, ProposalStatus
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import Store

from .model import (
    CANON,
    Commit,
    PageVersion,
    StoryError,
    UnknownRef,
    commit_from_object,
    page_from_object,
    parse_object,
    reading_key,
)

log = logging.getLogger("gibsey.story")
DB_FILENAME = "story.sqlite3"
CANON_REPLACED = "canon_replaced"  # meta: what the node's next alert says (_note_canon_replaced)
# What goes with the view when it is moved aside (damaged): nothing, it is folded again.
LOST = "nothing is lost: it is a view of the ledger, folded from it again at the start"
# Bump to force a rebuild after a change of the fold rules. 2: reading order by chapter; a
# second `main` kept as a branch of its own (_keep_other_canon).
FORMAT = "2"
# Trees ({page: version hash} at a commit) cached, the least recently used dropped first: at
# most TREE_CACHE of them and TREE_CACHE_PAGES pages in all (~200 bytes a page: ~1.6 MB), but
# always the last one made. A 710-page corpus's tree is ~140 KB: 64 of them were ~9 MB held.
TREE_CACHE = 64
TREE_CACHE_PAGES = 8192
# Entries folded that changed nothing in the view before the resume point is written anyway.
RESUME_WRITE_EVERY = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    hash TEXT NOT NULL, author TEXT NOT NULL, part INTEGER NOT NULL, parts INTEGER NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (hash, author, part));
CREATE TABLE IF NOT EXISTS objects (
    hash TEXT PRIMARY KEY, kind TEXT NOT NULL, entry TEXT NOT NULL, lamport INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    hash TEXT PRIMARY KEY, page TEXT NOT NULL, symbol TEXT NOT NULL, title TEXT NOT NULL,
    idx INTEGER NOT NULL, section INTEGER, chapter TEXT, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS versions_page ON versions (page);
CREATE TABLE IF NOT EXISTS commits (
    hash TEXT PRIMARY KEY, branch TEXT NOT NULL, author TEXT NOT NULL, message TEXT NOT NULL,
    parent TEXT, parents TEXT NOT NULL, source TEXT, gen INTEGER NOT NULL,
    lamport INTEGER NOT NULL, entry TEXT NOT NULL, pages INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    commit_hash TEXT NOT NULL, page TEXT NOT NULL, version TEXT NOT NULL, previous TEXT,
    PRIMARY KEY (commit_hash, page));
CREATE TABLE IF NOT EXISTS branches (
    name TEXT PRIMARY KEY, head TEXT NOT NULL, base TEXT, created_by TEXT NOT NULL,
    created INTEGER NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reflog (
    n INTEGER PRIMARY KEY, branch TEXT NOT NULL, old TEXT, new TEXT NOT NULL,
    actor TEXT NOT NULL, how TEXT NOT NULL, entry TEXT NOT NULL, lamport INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS actors (
    name TEXT PRIMARY KEY, first INTEGER NOT NULL, commits INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS edges (
    src TEXT NOT NULL, kind TEXT NOT NULL, dst TEXT NOT NULL, PRIMARY KEY (src, kind, dst));
CREATE INDEX IF NOT EXISTS edges_dst ON edges (dst, kind);
CREATE TABLE IF NOT EXISTS effects (
    entry TEXT PRIMARY KEY, lamport INTEGER NOT NULL, ok INTEGER NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hearings (
    proposal TEXT PRIMARY KEY, target TEXT NOT NULL, branch TEXT, source TEXT,
    title TEXT NOT NULL, proposer TEXT NOT NULL, status TEXT NOT NULL, lamport INTEGER NOT NULL);
"""
TABLES = (
    "chunks objects versions commits changes branches reflog actors edges effects hearings"
).split()

EDGE_KINDS = ("FOLLOWS", "ALTERNATE_OF", "AUTHORED_BY")


@dataclass(frozen=True)
class Branch:
    name: str
    head: str
    base: str | None
    created_by: str
    created: int
    updated: int


@dataclass(frozen=True)
class CommitInfo:
    hash: str
    branch: str
    author: str
    message: str
    parents: tuple[str, ...]
    source: str | None
    gen: int
    lamport: int
    entry: str
    pages: int


@dataclass(frozen=True)
class Hearing:
    proposal: str
    target: str
    branch: str | None
    source: str | None
    title: str
    proposer: str
    status: str  # open | applied | stale | rejected | expired | void | not-a-merge
    lamport: int


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    # A view: rebuilt from the ledger when lost, so NORMAL (survives kill -9) is enough.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.executescript(_SCHEMA)


class StoryGraph:
    def __init__(self, path: str | Path, disk: DiskHealth | None = None) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        # Told of every refused and every working write (the node's own, so that a full disk
        # is said once per episode whichever writer meets it first).
        self.disk = disk if disk is not None else DiskHealth()
        what = f"the story graph {self.path}"
        self.db = open_sqlite(self.path, what, _setup, moved_aside(self.path, LOST))
        self._trees: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()
        self._tree_pages = 0  # pages in all the trees of _trees
        # Where the next sync goes on from, when it is past what meta holds: (last, folded, the
        # `last` meta held when this was set). See _keep_resume_point.
        self._resume: tuple[str, int, str | None] | None = None

    @classmethod
    def open(cls, data_dir: Path, disk: DiskHealth | None = None) -> StoryGraph:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / DB_FILENAME, disk)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A disk that refuses it raises StorageError (reported to
        `disk`), with nothing of it stored: SQLite rolls a transaction back by itself on a full
        disk or an I/O error, so it is rolled back here only if still open (a second ROLLBACK
        would raise "cannot rollback" over the real error)."""
        with self.lock:
            changes = self.db.total_changes
            try:
                if self.db.in_transaction:  # one a failing COMMIT left open
                    self.db.execute("ROLLBACK")
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                    self.db.execute("COMMIT")
                except BaseException:
                    self._forget_trees()  # may hold trees of commits that were not stored
                    self._resume = None  # may be past what is stored
                    if self.db.in_transaction:
                        with suppress(sqlite3.Error):
                            self.db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                refused = sqlite_refusal(exc, f"the story graph {self.path}", self._folder)
                if refused is None:
                    raise
                self.disk.refused_write(refused)
                raise refused from exc
            if self.db.total_changes != changes:
                self.disk.wrote()

    @property
    def _folder(self) -> str:
        return str(Path(self.path).parent)

    def folded(self) -> int:
        """How many ledger entries the view has folded (quarantined ones included)."""
        return self._resume_meta()[1]

    def _resume_meta(self) -> tuple[str | None, int]:
        """(the last entry folded, as meta writes it, and how many were): this process's own
        point when it is past what meta holds and meta has not changed since, else meta's."""
        last = self._meta("last")
        if self._resume is not None and self._resume[2] == last:
            return self._resume[0], self._resume[1]
        self._resume = None
        return last, int(self._meta("folded") or 0)

    def _keep_resume_point(self, last: str, folded: int, wrote: bool) -> None:
        """Record where the next sync goes on from. In meta, with the fold's own writes when it
        made any; else (entries that change nothing here: a gallery's mints, every turn) only in
        memory, written every RESUME_WRITE_EVERY entries - a commit per sync was one WAL page
        a second on an SD card (gibsey bench wear). After a restart the view goes on from what
        meta holds and folds those entries again, which changes nothing."""
        stored = self._meta("last")
        saved = int(self._meta("folded") or 0)
        if wrote or folded - saved >= RESUME_WRITE_EVERY or stored is None:
            self._set_meta("last", last)
            self._set_meta("folded", str(folded))
            self._resume = None
        else:
            self._resume = (last, folded, stored)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ---- folding ----------------------------------------------------------------------------

    def sync(self, ledger: Ledger, *, rebuild: bool = False) -> int:
        """Bring the view up to the ledger; returns how many entries were folded."""
        store = ledger.store
        store.refresh()  # entries other processes (the CLI, the mesh) committed
        with store.lock, self._tx():
            changes = self.db.total_changes
            deciders, statuses = _merge_hearings(ledger.view().governance)
            quarantine = store.quarantine()
            # A bad stored row counts like a fork point: nothing of its feed from there on.
            for bad in store.bad_rows():
                quarantine[bad.author] = min(quarantine.get(bad.author, bad.seq), bad.seq)
            checked = {bytes.fromhex(a): seq for a, seq in store.heads().items()}
            canon = self._head(CANON)
            start, folded = self._resume_point(store, quarantine, rebuild=rebuild)
            # Read a row at a time, never all at once (a story import is tens of MB of rows):
            # the store's connection is used by nothing else while its lock is held.
            if start is None:
                rows = store.db.execute(
                    "SELECT lamport, author, seq, raw FROM entries ORDER BY lamport, author, seq"
                )
            else:
                rows = store.db.execute(
                    "SELECT lamport, author, seq, raw FROM entries WHERE lamport >= ? AND "
                    "(lamport, author, seq) > (?, ?, ?) ORDER BY lamport, author, seq",
                    (start[0], *start),
                )
            try:
                n, last, seen = self._fold_rows(rows, quarantine, checked, deciders)
            finally:
                rows.close()
            if start is not None and not seen:
                # Nothing new: no write at all (an idle node's card is not worn once a second,
                # and a full disk is not met where nothing needs storing).
                return 0
            if start is None and canon is not None:
                self._note_canon_replaced(canon)
            # Hearings still undecided (or decided against) in the ledger's view.
            for h, status in statuses.items():
                self.db.execute(
                    "UPDATE hearings SET status = ? WHERE proposal = ? AND status = 'open' "
                    "AND ? != 'passed'",
                    (status, h, status),
                )
            if last is not None:
                point = f"{last[0]}:{last[1].hex()}:{last[2]}"
                self._keep_resume_point(point, folded + n, self.db.total_changes != changes)
            return n

    def _head(self, branch: str) -> str | None:
        row = self.db.execute("SELECT head FROM branches WHERE name = ?", (branch,)).fetchone()
        return None if row is None else str(row[0])

    def _note_canon_replaced(self, was: str) -> None:
        """After a fold afresh: when `main` no longer holds what it held (`was`: another node's
        main, first in fold order, arrived), say so in the log and keep it for the node to
        alert (take_canon_replaced): nothing else would tell the gallery its canon changed."""
        now = self._head(CANON)
        if now is not None and was in self.ancestors(now):
            return
        kept = [
            str(name)
            for (name,) in self.db.execute(
                "SELECT name FROM branches WHERE name LIKE ? ORDER BY name", (f"{CANON}.%",)
            )
        ]
        others = ", ".join(kept) or "no branch"
        said = (
            f"{CANON} was at {was[:12]} and is now at {(now or 'nothing')[:12]}, which does not "
            f"hold it: another node's {CANON} comes first in the ledger's order (two nodes each "
            "imported a corpus before they met: import it on one node, the others receive it). "
            f"The other {CANON} is kept as {others}, and hearings that merged onto it are "
            f"stale (`gibsey story diff {CANON} {kept[0] if kept else 'BRANCH'}` shows what "
            "differs)"
        )
        log.warning("story: %s", said)
        self._set_meta(CANON_REPLACED, said)

    def take_canon_replaced(self) -> str | None:
        """What _note_canon_replaced kept, once (then forgotten), for the node's alert. Read
        first outside a transaction: asked every second, it writes nothing when nothing is."""
        with self.lock:
            if self._meta(CANON_REPLACED) is None:
                return None
            with self._tx():
                said = self._meta(CANON_REPLACED)
                self.db.execute("DELETE FROM meta WHERE key = ?", (CANON_REPLACED,))
            return said

    def _fold_rows(
        self,
        rows: Iterable[tuple[int, bytes, int, bytes]],
        quarantine: dict[bytes, int],
        checked: dict[bytes, int],
        deciders: dict[bytes, str],
    ) -> tuple[int, tuple[int, bytes, int] | None, bool]:
        """Fold `rows` in order: how many were passed (folded or quarantined), the last, and
        whether there was any row at all."""
        n = 0
        last: tuple[int, bytes, int] | None = None
        seen = False
        for lamport, author, seq, raw in rows:
            seen = True
            q = quarantine.get(author)
            if q is None or seq < q:
                if seq > checked.get(author, 0):
                    break  # stored after the store's check: folded at the next sync
                self._fold(parse(raw, verify=False), deciders)
            n += 1
            last = (lamport, author, seq)
        return n, last, seen

    def _resume_point(
        self, store: Store, quarantine: dict[bytes, int], *, rebuild: bool
    ) -> tuple[tuple[int, bytes, int] | None, int]:
        """(last entry folded, how many were) to go on from; (None, 0) after emptying the view
        when it must be folded afresh: asked to, another format or quarantine, or the ledger
        holds a different number of entries up to the last one folded (a merge slotted some in)."""
        qmark = json.dumps(sorted((a.hex(), s) for a, s in quarantine.items()))
        last, folded = self._resume_meta()
        start: tuple[int, bytes, int] | None = None
        if last is not None:
            lam, author, seq = last.split(":")
            start = (int(lam), bytes.fromhex(author), int(seq))
        fresh = rebuild or self._meta("format") != FORMAT or self._meta("quarantine") != qmark
        if not fresh and start is not None:
            # In two parts: the entries below its Lamport clock are counted from the Lamport
            # index alone; only the few at the same clock are looked up in the table.
            (held,) = store.db.execute(
                "SELECT (SELECT COUNT(*) FROM entries WHERE lamport < ?) + (SELECT COUNT(*) "
                "FROM entries WHERE lamport = ? AND (author, seq) <= (?, ?))",
                (start[0], *start),
            ).fetchone()
            fresh = held != folded
        if not fresh:
            return start, folded
        for table in TABLES:
            self.db.execute(f"DELETE FROM {table}")
        self._forget_trees()
        self._set_meta("format", FORMAT)
        self._set_meta("quarantine", qmark)
        return None, 0

    def _effect(self, e: Entry, ok: bool, note: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO effects (entry, lamport, ok, note) VALUES (?,?,?,?)",
            (e.hash_hex, e.lamport, int(ok), note),
        )

    def _fold(self, e: Entry, deciders: dict[bytes, str]) -> None:
        if e.type == "story-object":
            self._fold_object(e)
        elif e.type == "story-ref":
            self._fold_ref(e)
        elif e.type == "proposal" and e.body["action"] == "narrative-merge":
            self._fold_proposal(e)
        elif e.type == "vote" and e.hash in deciders:
            self._fold_decision(e, deciders[e.hash])

    def _fold_object(self, e: Entry) -> None:
        b = e.body
        h, author = b["hash"], e.author_hex
        if self.db.execute("SELECT 1 FROM objects WHERE hash = ?", (h,)).fetchone():
            self._effect(e, True, "object already held")
            return
        self.db.execute(
            "INSERT OR IGNORE INTO chunks (hash, author, part, parts, data) VALUES (?,?,?,?,?)",
            (h, author, b["part"], b["parts"], b["data"]),
        )
        # Counted, not read, until all parts are here (reading every part held at each part
        # read a page's parts over and over: quadratic in its size).
        (held,) = self.db.execute(
            "SELECT COUNT(*) FROM chunks WHERE hash = ? AND author = ? AND parts = ?",
            (h, author, b["parts"]),
        ).fetchone()
        if held < b["parts"]:
            self._effect(e, True, f"part {b['part'] + 1} of {b['parts']}")
            return
        rows = self.db.execute(
            "SELECT data FROM chunks WHERE hash = ? AND author = ? AND parts = ? ORDER BY part",
            (h, author, b["parts"]),
        )
        try:
            obj = parse_object("".join(r[0] for r in rows), h)
            if obj["kind"] == "page":
                self._add_version(page_from_object(obj), h)
            else:
                self._add_commit(commit_from_object(obj), h, e)
        except StoryError as exc:
            self._effect(e, False, f"object {h[:12]} refused: {exc}")
            return
        finally:
            self.db.execute("DELETE FROM chunks WHERE hash = ? AND author = ?", (h, author))
        self.db.execute(
            "INSERT INTO objects (hash, kind, entry, lamport) VALUES (?,?,?,?)",
            (h, obj["kind"], e.hash_hex, e.lamport),
        )
        self._effect(e, True, f"{obj['kind']} {h[:12]}")

    def _add_version(self, v: PageVersion, h: str) -> None:
        self.db.execute(
            "INSERT INTO versions (hash, page, symbol, title, idx, section, chapter, text) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (h, v.page, v.symbol, v.title, v.index, v.section, v.chapter, v.text),
        )

    def _add_commit(self, c: Commit, h: str, e: Entry) -> None:
        gen = self._generation(c)
        parent = c.parents[0] if c.parents else None
        before = self.tree(parent) if parent else {}
        self._check_changes_held(c)
        other = self.tree(c.parents[1]) if len(c.parents) == 2 else {}
        self.db.execute(
            "INSERT INTO commits (hash, branch, author, message, parent, parents, source, gen, "
            "lamport, entry, pages) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                h,
                c.branch,
                c.author,
                c.message,
                parent,
                json.dumps(list(c.parents)),
                c.source,
                gen,
                e.lamport,
                e.hash_hex,
                len(c.changes),
            ),
        )
        self._actor(c.author, e.lamport, commits=1)
        self._edge(f"commit:{h}", "AUTHORED_BY", f"actor:{c.author}")
        for p in c.parents:
            self._edge(f"commit:{h}", "FOLLOWS", f"commit:{p}")
        new_pages: list[str] = []
        for page in sorted(c.changes):
            version = c.changes[page]
            prev = before.get(page)
            self.db.execute(
                "INSERT INTO changes (commit_hash, page, version, previous) VALUES (?,?,?,?)",
                (h, page, version, prev),
            )
            self._version_edges(c.author, version, {prev, other.get(page)} - {None, version})
            if prev is None:
                new_pages.append(page)
        if len(new_pages) > 1:
            self._reading_order_edges(h)

    def _generation(self, c: Commit) -> int:
        """One more than the deepest parent's; every parent must be a known commit."""
        gens = []
        for p in c.parents:
            row = self.db.execute("SELECT gen FROM commits WHERE hash = ?", (p,)).fetchone()
            if row is None:
                raise StoryError(f"parent {p[:12]} is not a known commit")
            gens.append(row[0])
        return 1 + max(gens, default=0)

    def _check_changes_held(self, c: Commit) -> None:
        for page, version in c.changes.items():
            row = self.db.execute("SELECT page FROM versions WHERE hash = ?", (version,)).fetchone()
            if row is None:
                raise StoryError(f"version {version[:12]} of page {page} is not held")
            if row[0] != page:
                raise StoryError(f"version {version[:12]} is of page {row[0]}, not {page}")

    def _version_edges(self, author: str, version: str, follows: set[str | None]) -> None:
        """Edges of a version a commit brings: who authored it, which versions it follows (its
        previous on each parent's side) and which it is an alternate of."""
        # The first commit (in fold order) that introduces a version authored it.
        if not self.db.execute(
            "SELECT 1 FROM edges WHERE src = ? AND kind = 'AUTHORED_BY'",
            (f"version:{version}",),
        ).fetchone():
            self._edge(f"version:{version}", "AUTHORED_BY", f"actor:{author}")
        for before_v in follows:
            self._edge(f"version:{version}", "FOLLOWS", f"version:{before_v}")
            # Versions that follow the same version are alternates of each other.
            for (sib,) in self.db.execute(
                "SELECT src FROM edges WHERE kind = 'FOLLOWS' AND dst = ? AND src != ?",
                (f"version:{before_v}", f"version:{version}"),
            ).fetchall():
                if sib.startswith("version:"):
                    self._edge(f"version:{version}", "ALTERNATE_OF", sib)
                    self._edge(sib, "ALTERNATE_OF", f"version:{version}")

    def _reading_order_edges(self, h: str) -> None:
        """Reading order of the pages commit `h` adds: page FOLLOWS the one before it."""
        rows = self.db.execute(
            "SELECT section, chapter, idx, page FROM versions WHERE hash IN (SELECT version "
            "FROM changes WHERE commit_hash = ? AND previous IS NULL)",
            (h,),
        ).fetchall()
        order = [(row[3],) for row in sorted(rows, key=lambda row: reading_key(*row))]
        for (a,), (b,) in itertools.pairwise(order):
            self._edge(f"page:{b}", "FOLLOWS", f"page:{a}")

    def _edge(self, src: str, kind: str, dst: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO edges (src, kind, dst) VALUES (?,?,?)", (src, kind, dst)
        )

    def _actor(self, name: str, lamport: int, commits: int = 0) -> None:
        self.db.execute(
            "INSERT INTO actors (name, first, commits) VALUES (?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET commits = commits + excluded.commits",
            (name, lamport, commits),
        )

    def _move(self, branch: str, old: str | None, new: str, actor: str, how: str, e: Entry) -> None:
        self.db.execute(
            "UPDATE branches SET head = ?, updated = ? WHERE name = ?", (new, e.lamport, branch)
        )
        self.db.execute(
            "INSERT INTO reflog (branch, old, new, actor, how, entry, lamport) "
            "VALUES (?,?,?,?,?,?,?)",
            (branch, old, new, actor, how, e.hash_hex, e.lamport),
        )

    def _fold_ref(self, e: Entry) -> None:
        b = e.body
        name, commit, actor = b["branch"], b["commit"], b["actor"]
        if not self.db.execute("SELECT 1 FROM commits WHERE hash = ?", (commit,)).fetchone():
            self._effect(e, False, f"commit {commit[:12]} is not held")
            return
        head = self._head(name)
        old = b.get("old")
        if old is None:
            if head is not None and name == CANON and commit not in self.ancestors(head):
                self._keep_other_canon(e, head)
                return
            if head is not None:
                self._effect(e, False, f"branch {name} already exists")
                return
            self._create(name, commit, b.get("from"), actor, e)
            self._edge(f"branch:{name}", "AUTHORED_BY", f"actor:{actor}")
            self._effect(e, True, f"branch {name} created at {commit[:12]}")
            return
        if head is None:
            self._effect(e, False, f"no branch {name}")
            return
        if name == CANON:
            self._effect(e, False, f"{CANON} moves only by a passed narrative-merge hearing")
            return
        if head != old:
            self._effect(e, False, f"stale: {name} is at {head[:12]}, not {old[:12]}")
            return
        if old not in self.ancestors(commit):
            self._effect(e, False, f"{commit[:12]} does not descend from {old[:12]}")
            return
        self._move(name, old, commit, actor, "write", e)
        self._actor(actor, e.lamport)
        self._effect(e, True, f"{name} -> {commit[:12]}")

    def _keep_other_canon(self, e: Entry, standing: str) -> None:
        """A second `main` created (two nodes each imported a corpus before they met; the one
        first in fold order stands): kept as branch `main.<its author's first 8 hex>`, so an
        import is never left unreferenced, and said (sync's canon_replaced on the node that
        saw its own main go). Merges made onto it before are stale: proposed again, they
        merge into the main that stands."""
        b = e.body
        kept = f"{CANON}.{e.author_hex[:8]}"
        note = f"branch {CANON} already exists (at {standing[:12]})"
        if self._head(kept) is not None:
            self._effect(e, False, f"{note}; {kept} too")
            return
        self._create(kept, b["commit"], CANON, b["actor"], e)
        self._effect(e, True, f"{note}: this {CANON} kept as {kept} at {b['commit'][:12]}")

    def _create(self, name: str, commit: str, base: str | None, actor: str, e: Entry) -> None:
        """Branch `name` made at `commit` by entry `e` (from `base`, when it names one)."""
        self.db.execute(
            "INSERT INTO branches (name, head, base, created_by, created, updated) "
            "VALUES (?,?,?,?,?,?)",
            (name, commit, base, actor, e.lamport, e.lamport),
        )
        self.db.execute(
            "INSERT INTO reflog (branch, old, new, actor, how, entry, lamport) "
            "VALUES (?,?,?,?,?,?,?)",
            (name, None, commit, actor, "create", e.hash_hex, e.lamport),
        )
        self._actor(actor, e.lamport)
        if base is not None and base != name:
            self._edge(f"branch:{name}", "ALTERNATE_OF", f"branch:{base}")

    def _fold_proposal(self, e: Entry) -> None:
        b = e.body
        row = self.db.execute(
            "SELECT branch, source FROM commits WHERE hash = ? AND source IS NOT NULL",
            (b["target"],),
        ).fetchone()
        status = "open" if row is not None else "not-a-merge"
        self.db.execute(
            "INSERT OR REPLACE INTO hearings (proposal, target, branch, source, title, proposer, "
            "status, lamport) VALUES (?,?,?,?,?,?,?,?)",
            (
                e.hash_hex,
                b["target"],
                row[0] if row else None,
                row[1] if row else None,
                b["title"],
                b["proposer"],
                status,
                e.lamport,
            ),
        )
        self._effect(e, row is not None, status)

    def _fold_decision(self, e: Entry, proposal: str) -> None:
        """The vote that passed a narrative-merge hearing: apply the merge, here, in fold order."""
        h = self.db.execute(
            "SELECT target, branch, status FROM hearings WHERE proposal = ?", (proposal,)
        ).fetchone()
        if h is None or h[2] != "open":
            return
        target, branch = h[0], h[1]
        parents = json.loads(
            self.db.execute("SELECT parents FROM commits WHERE hash = ?", (target,)).fetchone()[0]
        )
        head = self._head(branch)
        if head != parents[0]:  # (no branch: None)
            status = "stale"
            note = f"hearing {proposal[:12]} passed, but {branch} moved since: merge not applied"
        else:
            status = "applied"
            note = f"hearing {proposal[:12]} passed: {branch} -> {target[:12]}"
            self._move(branch, head, target, f"hearing:{proposal[:12]}", "merge", e)
        self.db.execute("UPDATE hearings SET status = ? WHERE proposal = ?", (status, proposal))
        self._effect(e, status == "applied", note)

    # ---- reading ----------------------------------------------------------------------------

    def tree(self, commit: str) -> dict[str, str]:
        """{page id: version hash} at `commit`."""
        with self.lock:
            cached = self._trees.get(commit)
            if cached is not None:
                self._trees.move_to_end(commit)
                return cached
            chain: list[str] = []
            c: str | None = commit
            base: dict[str, str] = {}
            while c is not None:
                if c in self._trees:
                    base = dict(self._trees[c])
                    break
                row = self.db.execute("SELECT parent FROM commits WHERE hash = ?", (c,)).fetchone()
                if row is None:
                    raise UnknownRef(f"no commit {c[:12]}")
                chain.append(c)
                c = row[0]
            for c in reversed(chain):
                base.update(
                    self.db.execute(
                        "SELECT page, version FROM changes WHERE commit_hash = ?", (c,)
                    ).fetchall()
                )
            self._keep_tree(commit, base)
            return base

    def _forget_trees(self) -> None:
        self._trees.clear()
        self._tree_pages = 0

    def _keep_tree(self, commit: str, tree: dict[str, str]) -> None:
        """Cache `tree` (most recent), dropping the least recently used over the bounds."""
        old = self._trees.pop(commit, None)
        if old is not None:
            self._tree_pages -= len(old)
        self._trees[commit] = tree
        self._tree_pages += len(tree)
        while len(self._trees) > 1 and (
            len(self._trees) > TREE_CACHE or self._tree_pages > TREE_CACHE_PAGES
        ):
            _, dropped = self._trees.popitem(last=False)
            self._tree_pages -= len(dropped)

    def ancestors(self, commit: str) -> set[str]:
        """`commit` and every commit it descends from."""
        seen = {commit}
        todo = [commit]
        while todo:
            c = todo.pop()
            row = self.db.execute("SELECT parents FROM commits WHERE hash = ?", (c,)).fetchone()
            for p in json.loads(row[0]) if row else []:
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return seen

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor: the common one with the highest generation (ties by hash)."""
        with self.lock:
            common = self.ancestors(a) & self.ancestors(b)
            if not common:
                return None
            marks = ",".join("?" * len(common))
            row = self.db.execute(
                f"SELECT hash FROM commits WHERE hash IN ({marks}) ORDER BY gen DESC, hash LIMIT 1",
                tuple(common),
            ).fetchone()
            return str(row[0])

    def in_reading_order(self, hashes: Iterable[str]) -> list[str]:
        """Page versions sorted as the corpus reads (model.reading_key), their texts unread."""
        keyed = []
        for h in hashes:
            row = self.db.execute(
                "SELECT section, chapter, idx, page FROM versions WHERE hash = ?", (h,)
            ).fetchone()
            if row is None:
                raise UnknownRef(f"no page version {h[:12]}")
            keyed.append((reading_key(*row), h))
        keyed.sort()
        return [k[1] for k in keyed]

    def last_index(self, hashes: Iterable[str]) -> int:
        """The highest corpus index of the page versions `hashes` (0 if none), texts unread."""
        top: int | None = None
        with self.lock:
            for h in hashes:
                row = self.db.execute("SELECT idx FROM versions WHERE hash = ?", (h,)).fetchone()
                if row is None:
                    raise UnknownRef(f"no page version {h[:12]}")
                top = int(row[0]) if top is None else max(top, int(row[0]))
        return 0 if top is None else top

    def has_version(self, h: str) -> bool:
        """Whether page version `h` is held (its text not read)."""
        row = self.db.execute("SELECT 1 FROM versions WHERE hash = ?", (h,)).fetchone()
        return row is not None

    def version(self, h: str) -> PageVersion:
        row = self.db.execute(
            "SELECT page, symbol, title, idx, text, section, chapter FROM versions WHERE hash = ?",
            (h,),
        ).fetchone()
        if row is None:
            raise UnknownRef(f"no page version {h[:12]}")
        return PageVersion(*row)

    def branches(self) -> list[Branch]:
        with self.lock:
            rows = self.db.execute(
                "SELECT name, head, base, created_by, created, updated FROM branches ORDER BY name"
            ).fetchall()
        return [Branch(*r) for r in rows]

    def branch(self, name: str) -> Branch | None:
        row = self.db.execute(
            "SELECT name, head, base, created_by, created, updated FROM branches WHERE name = ?",
            (name,),
        ).fetchone()
        return Branch(*row) if row else None

    def commit(self, h: str) -> CommitInfo:
        row = self.db.execute(
            "SELECT hash, branch, author, message, parents, source, gen, lamport, entry, pages "
            "FROM commits WHERE hash = ?",
            (h,),
        ).fetchone()
        if row is None:
            raise UnknownRef(f"no commit {h[:12]}")
        return CommitInfo(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), *row[5:])

    def resolve(self, ref: str) -> str:
        """A branch name, or a unique prefix (>= 4 hex digits) of a commit hash -> commit hash."""
        with self.lock:
            b = self.branch(ref)
            if b is not None:
                return b.head
            if len(ref) >= 4 and all(ch in "0123456789abcdef" for ch in ref):
                rows = self.db.execute(
                    "SELECT hash FROM commits WHERE hash LIKE ? LIMIT 2", (ref + "%",)
                ).fetchall()
                if len(rows) == 1:
                    return str(rows[0][0])
            raise UnknownRef(f"no branch or commit {ref!r}")

    def log(self, commit: str, limit: int = 50) -> list[CommitInfo]:
        """History from `commit` back, newest first (by generation, then hash)."""
        out: list[CommitInfo] = []
        seen = {commit}
        frontier = [self.commit(commit)]
        while frontier and len(out) < limit:
            frontier.sort(key=lambda c: (-c.gen, c.hash))
            c = frontier.pop(0)
            out.append(c)
            for p in c.parents:
                if p not in seen:
                    seen.add(p)
                    frontier.append(self.commit(p))
        return out

    def hearings(self) -> list[Hearing]:
        rows = self.db.execute(
            "SELECT proposal, target, branch, source, title, proposer, status, lamport "
            "FROM hearings ORDER BY lamport, proposal"
        ).fetchall()
        return [Hearing(*r) for r in rows]

    def hearing(self, proposal: str) -> Hearing | None:
        row = self.db.execute(
            "SELECT proposal, target, branch, source, title, proposer, status, lamport "
            "FROM hearings WHERE proposal = ?",
            (proposal,),
        ).fetchone()
        return Hearing(*row) if row else None

    def effect(self, entry: str) -> tuple[bool, str] | None:
        row = self.db.execute("SELECT ok, note FROM effects WHERE entry = ?", (entry,)).fetchone()
        return (bool(row[0]), str(row[1])) if row else None

    def actors(self) -> list[tuple[str, int, int]]:
        return [
            (str(n), int(f), int(c))
            for n, f, c in self.db.execute(
                "SELECT name, first, commits FROM actors ORDER BY name"
            ).fetchall()
        ]

    def edges(self, kind: str | None = None, node: str | None = None) -> list[tuple[str, str, str]]:
        sql = "SELECT src, kind, dst FROM edges"
        cond: list[str] = []
        args: list[Any] = []
        if kind:
            cond.append("kind = ?")
            args.append(kind)
        if node:
            cond.append("(src = ? OR dst = ?)")
            args += [node, node]
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        return [tuple(r) for r in self.db.execute(sql + " ORDER BY src, kind, dst", args)]

    def reflog(self, branch: str | None = None) -> list[tuple[str, str | None, str, str, str, int]]:
        sql = "SELECT branch, old, new, actor, how, lamport FROM reflog"
        args: tuple[Any, ...] = ()
        if branch:
            sql += " WHERE branch = ?"
            args = (branch,)
        return [tuple(r) for r in self.db.execute(sql + " ORDER BY n", args)]

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows, sorted: what two replicas compare to show they agree."""
        with self.lock:
            out: dict[str, list[tuple[Any, ...]]] = {}
            for table in TABLES:
                cols = "*" if table != "reflog" else "branch, old, new, actor, how, entry, lamport"
                rows = self.db.execute(f"SELECT {cols} FROM {table}").fetchall()
                out[table] = sorted(rows, key=repr)
            return out


def _merge_hearings(governance: Governance) -> tuple[dict[bytes, str], dict[str, str]]:
    """From the ledger's view of the merge hearings: (deciding vote -> hearing) of those passed,
    and (hearing -> status) of all."""
    merges = [p for p in governance.proposals.values() if p.action == "narrative-merge"]
    deciders = {
        p.decided_by: p.hash_hex
        for p in merges
        if p.status is ProposalStatus.PASSED and p.decided_by
    }
    return deciders, {p.hash_hex: p.status.value for p in merges}
