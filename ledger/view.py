"""The view: a deterministic fold of every held feed into balances and hearings.

Entries are folded in the total order (lamport, author key bytes, seq), which depends only on
the entries themselves - never on the order they arrived in - so two nodes holding the same set
of feeds (and fork proofs) compute identical views. Entries of a forked author from the fork
point on are skipped (quarantined) on every node that holds the proof. The gallery's membership
is read from every feed's latest `members` entry before the fold: it does not depend on a
position in the fold, so no Lamport clock can place a hearing before the other nodes' lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .economy import OK, Economy, EntryEffect
from .entry import Entry, OrderKey
from .governance import Governance, Proposal, ProposalStatus


@dataclass
class View:
    economy: Economy = field(default_factory=Economy)
    governance: Governance = field(default_factory=Governance)
    # Entry hash -> effect, for the entries that did not simply apply (refused, noted,
    # quarantined): one for every folded entry was ~113 B an entry, a node's memory growing
    # with its whole history (20 MB a busy gallery day). See effect().
    effects: dict[bytes, EntryEffect] = field(default_factory=dict)
    last_key: OrderKey | None = None
    folded: int = 0

    def apply(self, e: Entry) -> EntryEffect:
        """Fold one entry; it must come after every entry folded so far."""
        key = e.order_key
        if self.last_key is not None and key <= self.last_key:
            raise ValueError("entries must be folded in (lamport, author, seq) order")
        self.last_key = key
        self.governance.tick(e.lamport)
        effect = self.economy.apply(e)
        if effect is None:
            effect = self.governance.apply(e, self.economy) or OK
        if effect != OK:
            self.effects[e.hash] = effect
        self.folded += 1
        return effect

    def effect(self, e: Entry) -> EntryEffect | None:
        """What `e` did in this view; None if it is not folded (yet). Entries are folded in
        order, all of them, so one that sorts at or before the last folded is folded: OK unless
        `effects` says otherwise."""
        said = self.effects.get(e.hash)
        if said is not None:
            return said
        if self.last_key is not None and e.order_key <= self.last_key:
            return OK
        return None

    def quarantined(self, e: Entry, start: int) -> None:
        self.effects[e.hash] = EntryEffect(False, f"quarantined: author equivocated at seq {start}")

    def passed(self) -> list[Proposal]:
        return [p for p in self.governance.proposals.values() if p.status is ProposalStatus.PASSED]


def build(
    entries: Iterable[Entry],
    quarantine: Mapping[bytes, int],
    members: frozenset[bytes] = frozenset(),
) -> View:
    """Fold `entries` (already in fold order) into a fresh view; `members` is the gallery as
    recorded by every feed's latest list (membership.gallery), known before the fold starts."""
    view = View(governance=Governance(members=members))
    for e in entries:
        start = quarantine.get(e.author)
        if start is not None and e.seq >= start:
            view.quarantined(e, start)
        else:
            view.apply(e)
    return view
