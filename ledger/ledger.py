"""The node's ledger: its own feed (signed with the node key), the store and the live view.

This is what the CLI, the daemon and the mesh use. It keeps the view current incrementally
(an entry that sorts after everything folded so far is folded straight in) and rebuilds it
from the store when one arrives that sorts earlier, or a fork proof changes the quarantine.
"""

from __future__ import annotations

from collections.abc import Iterable
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
        store.subscribe(self._on_stored)
        governance.ensure_schema(store)

    @classmethod
    def open(cls, data_dir: Path, key: SigningKey | None = None, **store_kwargs: Any) -> Ledger:
        if key is None:
            from gibsey.core.identity import load_or_create

            key = load_or_create(data_dir).signing_key
        return cls(Store.open(data_dir, **store_kwargs), key)

    def close(self) -> None:
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
