"""The node's ledger: its own feed (signed with the node key), the store and the live view.

This is what the CLI, the daemon and the mesh use. It keeps the view current incrementally
(an entry that sorts after everything folded so far is folded straight in) and rebuilds it
from the store when one arrives that sorts earlier, or a fork proof changes the quarantine.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from . import governance, membership
from .economy import EntryEffect
from .entry import Entry, now_ms
from .errors import LedgerError, Overdraw, OverMintBudget, Rejected, VoidHearing
from .forkproof import ForkProof
from .governance import Execution, Executors, ProposalStatus
from .membership import MEMBERS_TYPE, gallery
from .store import ImportResult, Store
from .view import View, build


class Ledger:
    def __init__(self, store: Store, key: SigningKey) -> None:
        self.store = store
        self.key = key
        self.author = bytes(key.verify_key)
        self._view: View | None = None
        # Mints and gifts of the node's turns: one commit (and fsync) per group, not per entry.
        self.group = GroupCommit(self)
        store.subscribe(self._on_stored)
        governance.ensure_schema(store)

    @classmethod
    def open(cls, data_dir: Path, key: SigningKey | None = None, **store_kwargs: Any) -> Ledger:
        if key is None:
            from gibsey.core.identity import load_or_create

            key = load_or_create(data_dir).signing_key
        return cls(Store.open(data_dir, **store_kwargs), key)

    def close(self) -> None:
        self.group.close()  # what was submitted is committed (and its futures resolved) first
        self.store.close()

    # ---- the view ---------------------------------------------------------------------------

    def _on_stored(self, item: Entry | ForkProof) -> None:
        v = self._view
        if v is None:
            return
        if isinstance(item, ForkProof):
            self._view = None  # quarantine changed: some folded entries no longer count
            return
        if item.type == MEMBERS_TYPE:
            self._view = None  # the gallery changed: every hearing is weighed anew
            return
        start = self.store.quarantine().get(item.author)
        if start is not None and item.seq >= start:
            v.quarantined(item, start)
        elif v.last_key is None or item.order_key > v.last_key:
            v.apply(item)
        else:
            self._view = None  # sorts before what we folded: refold from scratch

    def view(self) -> View:
        with self.store.lock:
            if self._view is None:
                members = gallery(self.store.latest_of_type(MEMBERS_TYPE))
                self._view = build(self.store.iter_ordered(), self.store.quarantine(), members)
            return self._view

    def rebuild(self) -> View:
        with self.store.lock:
            self._view = None
            return self.view()

    # ---- appending to our own feed --------------------------------------------------------

    def append(self, type_: str, body: dict[str, Any]) -> Entry:
        """Append without view checks (outcome entries, tests); prefer the typed helpers."""
        return self.store.append(self.key, type_, body)

    def mint_check(self, amount: int, wall: int) -> EntryEffect:
        """Whether a mint of ours stamped `wall` would count: the fold's own rule, asked of the
        view at its end, which is where our next entry (Lamport above all held) folds."""
        return self.view().economy.budget.check(self.author, amount, wall)

    def mint(self, actor: str, amount: int, ritual: str) -> Entry:
        """Append a mint - only if it fits this node's mint budget (raises OverMintBudget, and
        nothing is written: a mint the fold would not count costs no ledger write)."""
        wall = now_ms()

        def check() -> None:
            effect = self.mint_check(amount, wall)
            if not effect.applied:
                raise OverMintBudget(effect.note)

        body = {"actor": actor, "amount": amount, "ritual": ritual}
        return self.store.append(self.key, "mint", body, wall=wall, check=check)

    def record_members(self, nodes: Iterable[bytes]) -> Entry | None:
        """Record the gallery's member nodes as this node knows them (its mesh allow-list)."""
        return membership.record(self.store, self.key, nodes)

    def _cover(self, actor: str, amount: int, what: str) -> None:
        have = self.view().economy.balance(actor)
        if have < amount:
            raise Overdraw(f"{actor} has {have}, {what} needs {amount}")

    def gift(self, giver: str, receiver: str, amount: int, memo: str | None = None) -> Entry:
        """Append a gift - only if the giver can cover it in our view at this very point."""
        body: dict[str, Any] = {"from": giver, "to": receiver, "amount": amount}
        if memo:
            body["memo"] = memo
        # The check runs under the store lock, right before signing: no append can interleave.
        return self.store.append(
            self.key, "gift", body, check=lambda: self._cover(giver, amount, "the gift")
        )

    def burn(self, actor: str, amount: int, reason: str | None = None) -> Entry:
        body: dict[str, Any] = {"actor": actor, "amount": amount}
        if reason:
            body["reason"] = reason
        return self.store.append(
            self.key, "burn", body, check=lambda: self._cover(actor, amount, "the burn")
        )

    def void_reason(self) -> str | None:
        """Why a hearing this node opened now would be void (None: it would not be)."""
        view = self.view()
        return governance.void_reason(view.economy, view.governance.members, self.author)

    def propose(
        self, action: str, target: str, title: str, proposer: str, *, refuse_void: bool = False
    ) -> Entry:
        """Open a hearing. `refuse_void`: refused (VoidHearing, nothing written) if it would be
        void in our view - what a person asking for a hearing wants; the watchdog's crash-loop
        hearing is recorded even when void (it records the crash loop, too)."""

        def check() -> None:
            void = self.void_reason()
            if void is not None:
                raise VoidHearing(f"the hearing would be {void}")

        body = {"action": action, "target": target, "title": title, "proposer": proposer}
        return self.store.append(self.key, "proposal", body, check=check if refuse_void else None)

    def find_proposal(self, prefix: str) -> governance.Proposal:
        """A proposal by (a unique prefix of) its entry hash."""
        found = [
            p
            for h, p in self.view().governance.proposals.items()
            if h.hex().startswith(prefix.lower())
        ]
        if len(found) != 1:
            raise LedgerError(f"{len(found)} proposals match {prefix!r}")
        return found[0]

    def vote(self, proposal: str, actor: str, choice: str) -> Entry:
        """Vote for `actor`; refused here if the vote could have no effect in our view."""

        def check() -> None:
            p = self.find_proposal(proposal)
            if p.status is not ProposalStatus.OPEN:
                raise LedgerError(f"hearing {p.hash_hex[:12]} is {p.status.value}")
            if actor in p.votes:
                raise LedgerError(f"{actor} already voted {p.votes[actor]}")
            if p.weights.get(actor, 0) == 0:
                raise LedgerError(f"{actor} held no tokens when the hearing opened")

        p = self.find_proposal(proposal)
        body = {"proposal": p.hash_hex, "actor": actor, "choice": choice}
        return self.store.append(self.key, "vote", body, check=check)

    def run_executors(self, executors: Executors) -> list[Execution]:
        """Run executors of proposals that passed in our view and have not run here yet."""
        return governance.run_passed(self.store, self.key, self.view().passed(), executors)

    # ---- foreign entries ------------------------------------------------------------------

    def import_entry(self, item: bytes | Entry) -> ImportResult:
        return self.store.import_entry(item)

    def import_many(self, items: list[bytes | Entry]) -> list[ImportResult | Rejected]:
        return self.store.import_many(items)

    def import_fork_proof(self, data: bytes) -> bool:
        return self.store.import_fork_proof(data)


# ---- group commit ---------------------------------------------------------------------------
#
# Where a turn's bytes went (gibsey bench wear, 5 turns/s): every mint was its own transaction,
# and a SQLite commit writes whole 4 KiB pages to the WAL, one per B-tree it touches - the table's
# last leaf, the (author, seq) key, the fold order index and, before it was dropped, a unique
# index on the random hash (a random leaf per entry) - then fsyncs: ~17 KB of WAL for a ~330 B
# entry. A group of k entries rewrites those same few pages once, so the bytes per entry fall
# roughly as 1/k. What a group costs is the wait: an entry is acknowledged (its future resolved,
# the node's gift/txn announced) only after its group's commit, fsync included, returned.
GROUP_MAX = 256  # entries per commit at most (one transaction, signed as the store groups them)
GROUP_WAIT_S = 2.0  # how long the first entry of a group waits for more to join it


@dataclass
class _Request:
    """One entry asked of the group committer, resolved once its group is on disk."""

    kind: str  # "mint" or "gift"
    body: dict[str, Any]
    future: Future[Entry] = field(default_factory=Future)


class GroupCommit:
    """Mints and gifts of this node's own feed, committed in groups: one transaction and one
    fsync for every entry that arrived within `wait_s` of the group's first (at most `max_group`).

    `submit_*` returns at once with a future; it resolves to the entry after the group's commit
    returned (synchronous=FULL: the WAL was fsynced), or to the error that refused it (the
    checks of `Ledger.mint` and `Ledger.gift`, or a StorageError for the whole group). Nothing
    is announced to the store's listeners (the view, the mesh) before that commit either."""

    def __init__(
        self, ledger: Ledger, max_group: int = GROUP_MAX, wait_s: float = GROUP_WAIT_S
    ) -> None:
        self.ledger = ledger
        self.max_group = max_group
        self.wait_s = wait_s
        self.groups = 0  # commits made (for tests and the bench)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit_mint(self, actor: str, amount: int, ritual: str) -> Future[Entry]:
        return self._submit(_Request("mint", {"actor": actor, "amount": amount, "ritual": ritual}))

    def submit_gift(
        self, giver: str, receiver: str, amount: int, memo: str | None = None
    ) -> Future[Entry]:
        body: dict[str, Any] = {"from": giver, "to": receiver, "amount": amount}
        if memo:
            body["memo"] = memo
        return self._submit(_Request("gift", body))

    def _submit(self, request: _Request) -> Future[Entry]:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ledger-group", daemon=True)
                self._thread.start()
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Commit what was submitted, then stop the committer."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = [first], False
            deadline = time.monotonic() + self.wait_s
            while len(group) < self.max_group:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            try:
                self._commit(group)
            except Exception as exc:  # e.g. the view could not be read: refused, not hung
                for request in group:
                    if not request.future.done():
                        request.future.set_exception(exc)
            if stop:
                return

    def _commit(self, group: list[_Request]) -> None:
        """Runs of mints in one append_many each; a gift alone (its cover check reads the view,
        which must hold every entry before it)."""
        store = self.ledger.store
        with store.lock:
            mints: list[_Request] = []
            for request in group:
                if request.kind == "mint":
                    mints.append(request)
                    continue
                self._mints(mints)
                mints = []
                self._settle([request], functools.partial(self._gift, request.body))
            self._mints(mints)

    def _gift(self, b: dict[str, Any]) -> list[Entry]:
        return [self.ledger.gift(b["from"], b["to"], b["amount"], b.get("memo"))]

    def _mints(self, requests: list[_Request]) -> None:
        """The mints that fit this node's budget, appended in one transaction; the others
        refused (OverMintBudget, nothing written), as `Ledger.mint` would refuse them."""
        if not requests:
            return
        # The fold's own rule, asked in sequence of a copy of the budget at the view's end, every
        # mint at the same wall: the entries are stamped later (walls only grow), and a later
        # wall never has less credit, so each mint that passes here counts in the fold.
        budget = self.ledger.view().economy.budget
        budget = replace(budget, feeds=dict(budget.feeds), _clocks=list(budget._clocks))
        wall, author = now_ms(), self.ledger.author
        fits: list[_Request] = []
        for request in requests:
            amount = request.body["amount"]
            effect = budget.check(author, amount, wall)
            if not effect.applied:
                request.future.set_exception(OverMintBudget(effect.note))
                continue
            budget.observe(author, wall, amount)
            fits.append(request)
        items = [("mint", r.body) for r in fits]
        self._settle(fits, lambda: self.ledger.store.append_many(self.ledger.key, items))
        self.groups += 1

    @staticmethod
    def _settle(requests: list[_Request], commit: Callable[[], list[Entry]]) -> None:
        if not requests:
            return
        try:
            entries = commit()
        except Exception as exc:  # refused: the whole commit, nothing of it stored
            for r in requests:
                r.future.set_exception(exc)
            return
        for r, e in zip(requests, entries, strict=True):
            r.future.set_result(e)
