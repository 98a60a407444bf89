"""The narrative engine: git for story, on the node's ledger.

`Story` is what the CLI, the node part, GraphQL and the tests use. Every change is appended to
the node's own feed in one transaction (objects first, then the branch move or the proposal),
so a change is either wholly on the ledger or not at all; the graph (graph.py) then folds it.
Each change is computed and appended under the ledger's store lock against a freshly synced
graph, so the branch move it appends is valid when it is folded on this node.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gibsey.core.storage import StorageError
from gibsey.ledger.entry import Entry
from gibsey.ledger.governance import Execution, Executors, Proposal
from gibsey.ledger.ledger import Ledger

from .corpus import Corpus
from .graph import StoryGraph
from .model import (
    CANON,
    Commit,
    PageVersion,
    StoryError,
    UnknownPage,
    UnrelatedHistories,
    check_actor,
    check_branch,
    check_page_id,
    object_entries,
)
from .text import Conflict, Prefer, WordDiff, merge_text, word_diff

log = logging.getLogger("gibsey.story")

# (change, branch, page, version, actor): what a change announces as narrative/change.
Publish = Callable[[str, str, str | None, str | None, str], None]


class MergeConflict(StoryError):
    def __init__(self, source: str, into: str, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        lines = "\n  ".join(c.describe() for c in conflicts)
        super().__init__(
            f"merging {source} into {into} conflicts in {len(conflicts)} place(s); resolve "
            f"them (--resolve PAGE=FILE, or --prefer ours|theirs):\n  {lines}"
        )


@dataclass(frozen=True)
class PageDiff:
    page: str
    old: str | None  # version hashes (None: the page is not on that side)
    new: str | None
    diff: WordDiff


@dataclass
class MergePlan:
    source: str
    into: str
    ours: str  # head commits
    theirs: str
    base: str
    changes: dict[str, PageVersion] = field(default_factory=dict)  # page -> merged version
    clean: list[str] = field(default_factory=list)  # pages taken or merged without conflict
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.changes and not self.conflicts


@dataclass(frozen=True)
class Change:
    """What a change appended: its commit and the entry that moved a branch (or proposed)."""

    commit: str
    entry: Entry
    entries: int
    shared: str | None = None  # an import that reused this earlier import's commit (its branch)
    reused: int = 0  # page versions an import found already on the ledger, not appended again


class Story:
    def __init__(self, ledger: Ledger, data_dir: Path, graph: StoryGraph | None = None) -> None:
        self.ledger = ledger
        # The graph's writes report to the ledger's DiskHealth (the node's, in a node).
        self.graph = graph or StoryGraph.open(data_dir, ledger.store.disk)
        # Glyphs' proposals (Remember and Dream turns) that found no canon to branch from: a
        # node's count, said by its story part (node/story/part.py), paced.
        self.proposals_without_canon = 0

    @classmethod
    def open(cls, data_dir: Path) -> Story:
        return cls(Ledger.open(data_dir), data_dir)

    def close(self) -> None:
        self.graph.close()

    def close_all(self) -> None:
        self.graph.close()
        self.ledger.close()

    def sync(self, rebuild: bool = False) -> int:
        return self.graph.sync(self.ledger, rebuild=rebuild)

    # ---- reading ----------------------------------------------------------------------------

    def head(self, branch: str) -> str:
        b = self.graph.branch(branch)
        if b is None:
            raise StoryError(f"no branch {branch!r}")
        return b.head

    def page_id(self, ref: str, page: str) -> str:
        """The page id as stored on `ref`: `1` names page `001` when there is no page `1` (the
        CLI, GraphQL and REST alike: a write to `3` made a second page beside `003`)."""
        if page.isdigit():
            tree = self.graph.tree(self.graph.resolve(ref))
            padded = f"{int(page):03d}"
            if page not in tree and padded in tree:
                return padded
        return page

    def page(self, ref: str, page: str) -> tuple[str, PageVersion]:
        tree = self.graph.tree(self.graph.resolve(ref))
        h = tree.get(page)
        if h is None:
            raise UnknownPage(f"no page {page!r} on {ref}")
        return h, self.graph.version(h)

    def diff(self, a: str, b: str, page: str | None = None) -> list[PageDiff]:
        """Word diffs of every page that differs between refs `a` and `b` (or just `page`)."""
        ta = self.graph.tree(self.graph.resolve(a))
        tb = self.graph.tree(self.graph.resolve(b))
        if page is not None:
            if page not in ta and page not in tb:
                raise UnknownPage(f"no page {page!r} on {a} or {b}")
            pages = [page]
        else:
            pages = sorted(p for p in ta.keys() | tb.keys() if ta.get(p) != tb.get(p))
        out = []
        for p in pages:
            va, vb = ta.get(p), tb.get(p)
            old = self.graph.version(va).text if va else ""
            new = self.graph.version(vb).text if vb else ""
            out.append(PageDiff(p, va, vb, word_diff(old, new)))
        return out

    def plan_merge(
        self,
        source: str,
        into: str,
        resolutions: dict[str, str] | None = None,
        prefer: Prefer = None,
    ) -> MergePlan:
        """The three-way merge of branch `source` into branch `into`, without applying it."""
        resolutions = resolutions or {}
        ours, theirs = self.head(into), self.head(source)
        base = self.graph.merge_base(ours, theirs)
        if base is None:
            raise UnrelatedHistories(
                f"{source} and {into} share no history (imported separately?): nothing to merge"
            )
        plan = MergePlan(source, into, ours, theirs, base)
        tz, ta, tb = self.graph.tree(base), self.graph.tree(ours), self.graph.tree(theirs)
        for p in resolutions:
            if p not in ta and p not in tb:
                raise UnknownPage(f"resolution for page {p!r}, which is on neither branch")
        for p in sorted(ta.keys() | tb.keys()):
            vz, va, vb = tz.get(p), ta.get(p), tb.get(p)
            if va == vb or vb == vz or vb is None:
                if p in resolutions and va is not None:
                    self._resolved(plan, p, va, resolutions[p])
                continue
            assert vb is not None
            if va == vz or va is None:
                plan.changes[p] = self.graph.version(vb)
                plan.clean.append(p)
                continue
            z = self.graph.version(vz).text if vz else ""
            a, b = self.graph.version(va), self.graph.version(vb)
            if p in resolutions:
                self._resolved(plan, p, va, resolutions[p])
                continue
            m = merge_text(p, z, a.text, b.text, prefer)
            if m.conflicts:
                plan.conflicts.extend(m.conflicts)
                continue
            if m.text != a.text:
                plan.changes[p] = a.with_text(m.text)
            plan.clean.append(p)
        return plan

    def _resolved(self, plan: MergePlan, page: str, ours: str, text: str) -> None:
        v = self.graph.version(ours)
        if v.text != text:
            plan.changes[page] = v.with_text(text)
        plan.clean.append(page)

    # ---- changing ---------------------------------------------------------------------------

    def _append(
        self, objects: Iterable[dict[str, Any]], last: tuple[str, dict[str, Any]]
    ) -> tuple[Entry, int]:
        """Append the objects' `story-object` entries and then `last`, in one transaction (all
        or nothing): the last entry and how many. The entries are made as they are written, an
        object at a time, and not held (a corpus import is tens of MB of them)."""

        def items() -> Iterator[tuple[str, dict[str, Any]]]:
            for obj in objects:
                yield from object_entries(obj)
            yield last

        entry, count = self.ledger.store.append_stream(self.ledger.key, items())
        assert entry is not None  # (`last` at least)
        return entry, count

    def _check_effect(self, e: Entry) -> None:
        try:
            self.sync()
        except StorageError as exc:
            # The entry is on the ledger (its append returned; on a full disk the ledger's
            # entry log may still take it): only the story view, made from the ledger, was not
            # written. Said so: a bare "no space" would read as "nothing stored".
            raise StoryError(
                f"recorded on the ledger (entry {e.hash_hex[:16]}), but the story view could "
                f"not be updated: {exc}; it catches up by itself once the disk has room"
            ) from exc
        effect = self.graph.effect(e.hash_hex)
        if effect is not None and not effect[0]:
            raise StoryError(f"appended, but it had no effect: {effect[1]}")

    def import_corpus(
        self,
        corpus: Corpus,
        branch: str = CANON,
        actor: str = "node",
        message: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> Change:
        """Import every page as the root commit of a new branch: all of it, or nothing.

        What is already on the ledger is not appended again: when an earlier import's root
        commit holds exactly these page versions, the new branch is created at that commit (one
        `story-ref`: the two branches share history, merges between them work); otherwise the
        new root commit names the versions already held without re-appending them.
        `progress(done, total)` is called as each new page is read and appended (a command's
        progress bar: a large corpus takes seconds)."""
        check_branch(branch)
        check_actor(actor)
        with self.ledger.store.lock:
            self.sync()
            if self.graph.branch(branch) is not None:
                raise StoryError(
                    f"branch {branch} exists; import into a new branch (--branch NAME)"
                )
            # The versions' hashes from the corpus's check: no page text is held here (a corpus
            # is tens of MB); each page is read again as it is appended, below.
            hashes = corpus.page_hashes()
            at = {page: i for i, (page, _) in enumerate(hashes)}  # (a repeated id: the last)
            tree = {page: hashes[i][1] for page, i in at.items()}
            earlier = self._imported_as(tree)
            if earlier is not None:
                return self._branch_at_import(branch, actor, earlier, len(tree))
            commit = Commit(
                (),
                branch,
                actor,
                message or f"import {len(tree)} pages from {corpus.root.name}",
                tree,
            )
            new = [i for page, i in at.items() if not self.graph.has_version(tree[page])]
            # Pages read one at a time as they are appended (a generator), never all at once; a
            # page file changed since the check raises in the transaction: nothing is stored.
            objs = itertools.chain(
                (self._page_object(corpus, i, n, len(new), progress) for n, i in enumerate(new)),
                (commit.to_object(),),
            )
            ref = {"branch": branch, "commit": commit.hash, "actor": actor}
            entry, count = self._append(objs, ("story-ref", ref))
            self._check_effect(entry)
        return Change(commit.hash, entry, count, reused=len(tree) - len(new))

    @staticmethod
    def _page_object(
        corpus: Corpus, i: int, n: int, total: int, progress: Callable[[int, int], None] | None
    ) -> dict[str, Any]:
        """Page `i` of the corpus, read again, as its story object; the `n`th of `total`."""
        obj = corpus.checked_page(i).to_object()
        if progress is not None:
            progress(n + 1, total)
        return obj

    def _imported_as(self, tree: dict[str, str]) -> str | None:
        """The root commit (an import) whose pages are exactly `tree`, if one is held.

        Oldest first, so every later import of the same corpus joins the same history."""
        with self.graph.lock:
            rows = self.graph.db.execute(
                "SELECT hash FROM commits WHERE parent IS NULL AND pages = ? "
                "ORDER BY lamport, hash",
                (len(tree),),
            ).fetchall()
        return next((str(h) for (h,) in rows if self.graph.tree(h) == tree), None)

    def _branch_at_import(self, branch: str, actor: str, commit: str, pages: int) -> Change:
        """`branch` created at an earlier import's root commit (called under the store lock)."""
        origin = self.graph.commit(commit).branch
        body: dict[str, Any] = {"branch": branch, "commit": commit, "actor": actor}
        if self.graph.branch(origin) is not None:
            body["from"] = origin
        entry, count = self._append([], ("story-ref", body))
        self._check_effect(entry)
        return Change(commit, entry, count, shared=origin, reused=pages)

    def create_branch(self, name: str, source: str = CANON, actor: str = "node") -> Change:
        check_branch(name)
        check_actor(actor)
        with self.ledger.store.lock:
            self.sync()
            if self.graph.branch(name) is not None:
                raise StoryError(f"branch {name} already exists")
            head = self.graph.resolve(source)
            body: dict[str, Any] = {"branch": name, "commit": head, "actor": actor}
            if self.graph.branch(source) is not None:
                body["from"] = source
            entry, count = self._append([], ("story-ref", body))
            self._check_effect(entry)
        return Change(head, entry, count)

    def write(
        self,
        branch: str,
        page: str,
        text: str,
        actor: str,
        *,
        message: str = "",
        title: str | None = None,
        symbol: str | None = None,
    ) -> Change:
        """A new version of `page` on `branch` (a new page needs `title` and `symbol`)."""
        check_actor(actor)
        check_page_id(page)
        with self.ledger.store.lock:
            self.sync()
            if branch == CANON:
                raise StoryError(
                    f"{CANON} is canon: write on a branch and propose it (gibsey story propose)"
                )
            head = self.head(branch)
            tree = self.graph.tree(head)
            if page in tree:
                old = self.graph.version(tree[page])
                v = PageVersion(
                    page,
                    symbol or old.symbol,
                    title or old.title,
                    old.index,
                    text,
                    old.section,
                    old.chapter,
                )
            elif title is None or symbol is None:
                raise UnknownPage(
                    f"no page {page!r} on {branch}; a new page needs a title and a symbol "
                    "(--title, --symbol)"
                )
            else:
                index = 1 + self.graph.last_index(tree.values())  # (no page's text read)
                v = PageVersion(page, symbol, title, index, text)
            if tree.get(page) == v.hash:
                raise StoryError(f"page {page} on {branch} already reads exactly so")
            commit = Commit((head,), branch, actor, message or f"write {page}", {page: v.hash})
            ref = {"branch": branch, "commit": commit.hash, "actor": actor, "old": head}
            entry, count = self._append([v.to_object(), commit.to_object()], ("story-ref", ref))
            self._check_effect(entry)
        return Change(commit.hash, entry, count)

    def _merge_commit(self, plan: MergePlan, actor: str) -> tuple[Commit, list[dict[str, Any]]]:
        if plan.conflicts:
            raise MergeConflict(plan.source, plan.into, plan.conflicts)
        if plan.up_to_date:
            raise StoryError(f"{plan.into} already has everything on {plan.source}")
        commit = Commit(
            (plan.ours, plan.theirs),
            plan.into,
            actor,
            f"merge {plan.source} into {plan.into}",
            {p: v.hash for p, v in plan.changes.items()},
            plan.source,
        )
        objs = [v.to_object() for v in plan.changes.values()] + [commit.to_object()]
        return commit, objs

    def merge(
        self,
        source: str,
        into: str,
        actor: str,
        resolutions: dict[str, str] | None = None,
        prefer: Prefer = None,
    ) -> Change:
        """Merge `source` into a branch that is not canon, at once (canon needs a hearing)."""
        check_actor(actor)
        with self.ledger.store.lock:
            self.sync()
            if into == CANON:
                raise StoryError(f"{CANON} is canon: a merge into it is proposed (story propose)")
            plan = self.plan_merge(source, into, resolutions, prefer)
            commit, objs = self._merge_commit(plan, actor)
            ref = {"branch": into, "commit": commit.hash, "actor": actor, "old": plan.ours}
            entry, count = self._append(objs, ("story-ref", ref))
            self._check_effect(entry)
        return Change(commit.hash, entry, count)

    def propose(
        self,
        source: str,
        actor: str,
        into: str = CANON,
        resolutions: dict[str, str] | None = None,
        prefer: Prefer = None,
        title: str | None = None,
    ) -> Change:
        """Open a narrative-merge hearing whose target is the merge commit's hash.

        Refused (nothing appended) while the merge conflicts and no resolution settles it, and
        when the hearing would be void in our view (GOVERNANCE.md: nobody holds tokens, or this
        node is not a member of the gallery) - the ledger's own rule, asked before writing."""
        check_actor(actor)
        with self.ledger.store.lock:
            self.sync()
            plan = self.plan_merge(source, into, resolutions, prefer)
            commit, objs = self._merge_commit(plan, actor)
            self._refuse_a_second_hearing(source, into, commit)
            void = self.ledger.void_reason()
            if void is not None:
                raise StoryError(
                    f"refused: the hearing would be {void} - nothing was written "
                    "(tokens come from rituals at a dial; see ledger/GOVERNANCE.md)"
                )
            body = {
                "action": "narrative-merge",
                "target": commit.hash,
                "title": (title or f"merge {source} into {into} ({len(plan.changes)} pages)")[:200],
                "proposer": actor,
            }
            entry, count = self._append(objs, ("proposal", body))
            self._check_effect(entry)
        return Change(commit.hash, entry, count)

    def _refuse_a_second_hearing(self, source: str, into: str, commit: Commit) -> None:
        """A hearing still open on the same merge (the same two heads) is the one to vote in:
        a second, identical one split the room's votes between them (an outside tester)."""
        for h in self.graph.hearings():
            if h.status == "open" and self.graph.commit(h.target).parents == commit.parents:
                raise StoryError(
                    f"refused: hearing {h.proposal[:12]} is open on this merge of {source} into "
                    f"{into} already - nothing was written (vote in it: gibsey ledger vote "
                    f"--as ACTOR {h.proposal[:12]} yes|no)"
                )

    # ---- the merge ritual: what runs when a hearing passes ----------------------------------

    def executor(self, publish: Publish | None = None) -> Callable[[Proposal], str]:
        def run(p: Proposal) -> str:
            self.sync()
            h = self.graph.hearing(p.hash_hex)
            if h is None or h.status == "not-a-merge":
                raise StoryError("the proposal's target is not a merge commit held here")
            if h.status != "applied":
                raise StoryError(f"merge not applied: {h.status}")
            assert h.branch is not None
            detail = f"{h.source} merged into {h.branch} at {h.target[:12]}"
            if publish is not None:
                try:
                    publish("merge", h.branch, None, h.target, p.proposer)
                except Exception as exc:  # the merge stands; only the announcement failed
                    log.warning("narrative/change for %s not published: %s", h.target, exc)
                    detail += f" (not announced: {exc})"
            return detail

        return run

    def run_executors(self, publish: Publish | None = None) -> list[Execution]:
        """Apply-side of passed narrative-merge hearings: exactly once per node (ledger rule)."""
        self.sync()
        ex = Executors()
        ex.register("narrative-merge", self.executor(publish))
        return self.ledger.run_executors(ex)
