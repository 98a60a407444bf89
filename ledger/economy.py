"""The gift economy: balances folded from mint, gift and burn entries (rules in ECONOMY.md).

All arithmetic is on Python integers with floor division, so every node - whatever its CPU or
language - computes the same numbers. Entries must be applied in the fold order (see view.py);
this module only knows how one entry changes the state.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from .entry import Entry

# Diminishing returns: the k-th earlier gift from the same giver to the same receiver within
# the last GIFT_WINDOW Lamport ticks makes a new gift worth amount * (3/4)^k to the receiver,
# applied as k successive floor(v * 3 / 4) steps (integer-only, so identical everywhere).
GIFT_WINDOW = 64
GIFT_RATIO_NUM = 3
GIFT_RATIO_DEN = 4


@dataclass(frozen=True, slots=True)
class EntryEffect:
    """What one entry did to the view. `applied=False` entries stay in the log, with a reason."""

    applied: bool
    note: str = ""


OK = EntryEffect(True)


# The mint budget (ECONOMY.md): each feed - each node - mints at most MINT_BUDGET tokens at once
# and regains one token per MINT_REFILL_MS of its clock (10 a second, far above what a dial
# turned by hand mints). A feed's clock is its entries' walls, made non-decreasing and - once
# other feeds have been folded - held between the lowest of their clocks minus the slack and
# the highest plus the slack: a forged wall (far ahead, far behind, jumping) gains no more than
# the other feeds' clocks advance, plus twice the slack.
MINT_BUDGET = 10_000
MINT_REFILL_MS = 100
MINT_CLOCK_SLACK_MS = 600_000


@dataclass(frozen=True, slots=True)
class FeedClock:
    """One feed's budget clock (ms) and credit (ms of refill; a token costs MINT_REFILL_MS)."""

    t: int
    credit: int


@dataclass
class MintBudget:
    """Every feed's mint budget, advanced by each of its entries in fold order.

    `check` is the one rule: the fold applies a mint only if it passes, and a node asks it
    before it appends a mint of its own (`Ledger.mint`), so the two can never disagree."""

    feeds: dict[bytes, FeedClock] = field(default_factory=dict)
    _clocks: list[tuple[int, bytes]] = field(default_factory=list)  # (t, feed), ascending

    def _bounds(self, author: bytes) -> tuple[int, int] | None:
        """(lowest, highest) clock of the other feeds folded so far; None: there is none."""
        others = [t for t, a in (self._clocks[:2] + self._clocks[-2:]) if a != author]
        return (min(others), max(others)) if others else None

    def clock(self, author: bytes, wall: int) -> FeedClock:
        """The feed's clock and credit at an entry stamped `wall` (nothing changes)."""
        prev = self.feeds.get(author)
        bounds = self._bounds(author)
        t = wall
        if bounds is not None:
            t = min(max(wall, bounds[0] - MINT_CLOCK_SLACK_MS), bounds[1] + MINT_CLOCK_SLACK_MS)
        if prev is None:
            return FeedClock(t, MINT_BUDGET * MINT_REFILL_MS)
        if t <= prev.t:
            return prev  # a clock that went back, or is held back, regains nothing
        return FeedClock(t, min(MINT_BUDGET * MINT_REFILL_MS, prev.credit + t - prev.t))

    def check(self, author: bytes, amount: int, wall: int) -> EntryEffect:
        """Whether a mint of `amount` by `author` stamped `wall` fits its budget now."""
        have = self.clock(author, wall).credit // MINT_REFILL_MS
        if amount > have:
            return EntryEffect(
                False,
                f"over mint budget: node {author.hex()[:12]} may mint {have} now, the mint is "
                f"{amount} (at most {MINT_BUDGET}, one more per {MINT_REFILL_MS} ms)",
            )
        return OK

    def observe(self, author: bytes, wall: int, amount: int = 0) -> None:
        """Advance the feed's clock to an entry of it; spend `amount` tokens (a mint applied)."""
        prev = self.feeds.get(author)
        c = self.clock(author, wall)
        self.feeds[author] = FeedClock(c.t, c.credit - amount * MINT_REFILL_MS)
        if prev is not None:
            self._clocks.remove((prev.t, author))
        bisect.insort(self._clocks, (c.t, author))


def gift_value(amount: int, k: int) -> int:
    """What the receiver gets for a gift of `amount` after `k` recent gifts on the same pair."""
    value = amount
    for _ in range(k):
        if value == 0:
            break
        value = value * GIFT_RATIO_NUM // GIFT_RATIO_DEN
    return value


@dataclass
class Economy:
    balances: dict[str, int] = field(default_factory=dict)
    minted: int = 0
    burned: int = 0  # burns plus what diminishing returns took off gifts
    # (giver, receiver) -> Lamport clocks of that pair's applied gifts within the window, oldest
    # first; a pair whose last gift left the window is dropped (_remember_gift): kept, every
    # pair a gallery ever saw stayed, ~1 KB each, in every node's memory and every replay.
    _recent: dict[tuple[str, str], deque[int]] = field(default_factory=dict)
    # Every gift in _recent, (its clock, its pair), in fold order: which pairs' clocks expire.
    _expiry: deque[tuple[int, tuple[str, str]]] = field(default_factory=deque)
    budget: MintBudget = field(default_factory=MintBudget)

    def balance(self, actor: str) -> int:
        return self.balances.get(actor, 0)

    @property
    def supply(self) -> int:
        return self.minted - self.burned

    def recent_gifts(self, giver: str, receiver: str, lamport: int) -> int:
        """k: applied gifts giver->receiver with Lamport clock in (lamport - GIFT_WINDOW, ...]."""
        q = self._recent.get((giver, receiver))
        if not q:
            return 0
        return sum(1 for t in q if t > lamport - GIFT_WINDOW)

    def preview_gift(self, giver: str, receiver: str, amount: int, lamport: int) -> EntryEffect:
        """Whether a gift would apply at `lamport`, without changing anything."""
        have = self.balance(giver)
        if have < amount:
            return EntryEffect(False, f"overdraw: {giver} has {have}, gift needs {amount}")
        k = self.recent_gifts(giver, receiver, lamport)
        value = gift_value(amount, k)
        if k:
            return EntryEffect(True, f"{receiver} receives {value} of {amount} ({k} recent gifts)")
        return OK

    def _remember_gift(self, pair: tuple[str, str], lamport: int) -> None:
        """Count a gift on its pair, and let go of the gifts (and the pairs) out of the window:
        the fold runs in Lamport order, so an expired clock never counts again, and each pair's
        oldest clock is its first in _expiry."""
        horizon = lamport - GIFT_WINDOW
        expiry = self._expiry
        while expiry and expiry[0][0] <= horizon:
            _, old = expiry.popleft()
            clocks = self._recent[old]
            clocks.popleft()
            if not clocks:
                del self._recent[old]
        self._recent.setdefault(pair, deque()).append(lamport)
        expiry.append((lamport, pair))

    def apply(self, e: Entry) -> EntryEffect | None:
        """Apply one entry (any type: each one advances its feed's mint clock); None if the
        type is not an economy type."""
        type_, body, lamport = e.type, e.body, e.lamport
        if type_ == "mint":
            actor, amount = body["actor"], body["amount"]
            effect = self.budget.check(e.author, amount, e.wall)
            self.budget.observe(e.author, e.wall, amount if effect.applied else 0)
            if not effect.applied:
                return effect
            self.balances[actor] = self.balance(actor) + amount
            self.minted += amount
            return OK
        self.budget.observe(e.author, e.wall)
        if type_ == "gift":
            giver, receiver, amount = body["from"], body["to"], body["amount"]
            effect = self.preview_gift(giver, receiver, amount, lamport)
            if not effect.applied:
                return effect
            value = gift_value(amount, self.recent_gifts(giver, receiver, lamport))
            self.balances[giver] -= amount
            self.balances[receiver] = self.balance(receiver) + value
            self.burned += amount - value
            self._remember_gift((giver, receiver), lamport)
            return effect
        if type_ == "burn":
            actor, amount = body["actor"], body["amount"]
            have = self.balance(actor)
            if have < amount:
                return EntryEffect(False, f"overdraw: {actor} has {have}, burn needs {amount}")
            self.balances[actor] = have - amount
            self.burned += amount
            return OK
        return None
