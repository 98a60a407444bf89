"""The gift economy: balances folded from mint, gift and burn entries (rules in ECONOMY.md).

All arithmetic is on Python integers with floor division, so every node - whatever its CPU or
language - computes the same numbers. Entries must be applied in the fold order (see view.py);
this module only knows how one entry changes the state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Diminishing returns: the k-th earlier gift from the same giver to the same receiver within
# the last GIFT_WINDOW Lamport ticks makes a new gift worth amount * (3/4)^k to the receiver,
# applied as k successive floor(v * 3 / 4) steps (integer-only, so identical everywhere).
GIFT_WINDOW = 64
GIFT_RATIO_NUM = 3
GIFT_RATIO_DEN = 4


def gift_value(amount: int, k: int) -> int:
    """What the receiver gets for a gift of `amount` after `k` recent gifts on the same pair."""
    value = amount
    for _ in range(k):
        if value == 0:
            break
        value = value * GIFT_RATIO_NUM // GIFT_RATIO_DEN
    return value


@dataclass(frozen=True, slots=True)
class EntryEffect:
    """What one entry did to the view. `applied=False` entries stay in the log, with a reason."""

    applied: bool
    note: str = ""


OK = EntryEffect(True)


@dataclass
class Economy:
    balances: dict[str, int] = field(default_factory=dict)
    minted: int = 0
    burned: int = 0  # burns plus what diminishing returns took off gifts
    # (giver, receiver) -> Lamport clocks of that pair's applied gifts, oldest first.
    _recent: dict[tuple[str, str], deque[int]] = field(default_factory=dict)

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

    def apply(self, type_: str, body: dict[str, Any], lamport: int) -> EntryEffect | None:
        """Apply one entry's body; None if the type is not an economy type."""
        if type_ == "mint":
            actor, amount = body["actor"], body["amount"]
            self.balances[actor] = self.balance(actor) + amount
            self.minted += amount
            return OK
        if type_ == "gift":
            giver, receiver, amount = body["from"], body["to"], body["amount"]
            effect = self.preview_gift(giver, receiver, amount, lamport)
            if not effect.applied:
                return effect
            value = gift_value(amount, self.recent_gifts(giver, receiver, lamport))
            self.balances[giver] -= amount
            self.balances[receiver] = self.balance(receiver) + value
            self.burned += amount - value
            q = self._recent.setdefault((giver, receiver), deque())
            while q and q[0] <= lamport - GIFT_WINDOW:
                q.popleft()  # the fold runs in Lamport order: expired clocks never count again
            q.append(lamport)
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
