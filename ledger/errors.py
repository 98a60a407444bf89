"""Errors raised by the ledger.

`Rejected` is what a peer's bad entry produces: it always carries a `RejectReason`, so the mesh
can count rejections by kind and `gibsey ledger` can print why; the store guarantees that a
rejected import changed nothing.
"""

from __future__ import annotations

from enum import StrEnum


class LedgerError(Exception):
    """Something the caller asked for cannot be done (e.g. an overdrawing gift)."""


class RejectReason(StrEnum):
    MALFORMED = "malformed"  # not an entry at all: garbage bytes, wrong fields, wrong types
    NOT_CANONICAL = "not-canonical"  # valid JSON, but not the one canonical encoding
    TOO_LARGE = "too-large"  # whole entry over MAX_ENTRY_BYTES
    BODY_TOO_LARGE = "body-too-large"  # canonical body over MAX_BODY_BYTES
    UNKNOWN_TYPE = "unknown-type"
    INVALID_BODY = "invalid-body"  # known type, body does not have that type's shape
    BAD_SIGNATURE = "bad-signature"
    SKIPPED_SEQ = "skipped-seq"  # a gap: we do not hold seq-1 of this feed
    WRONG_PREV = "wrong-prev"  # prev is not the hash of the entry we hold at seq-1
    LAMPORT_REGRESSION = "lamport-regression"  # lamport not above the previous entry's
    AUTHOR_QUARANTINED = "author-quarantined"  # the author has equivocated (fork proof held)
    HELD_DAMAGED = "held-damaged"  # we hold a bad row of that feed at or before this seq
    BAD_FORK_PROOF = "bad-fork-proof"
    NOT_A_MEMBER = "not-a-member"  # the mesh holds only feeds of its allow-listed keys
    # More than MAX_GROUP - 1 unsigned entries in a row: no head may vouch for so many (v2).
    GROUP_TOO_LONG = "group-too-long"


class Rejected(LedgerError):
    """An entry or fork proof was refused; the store is exactly as it was before."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class Overdraw(LedgerError):
    """Our own node refused to append a gift or burn its actor cannot cover in our view."""


class OverMintBudget(LedgerError):
    """Our own node refused to append a mint over its mint budget (ECONOMY.md)."""


class OwnFeedWaits(LedgerError):
    """This node's own feed may not be signed now: it is behind its mark, or held until the
    peers have shown how far they hold it (ledger/ownfeed.py)."""


class VoidHearing(LedgerError):
    """Our own node refused to open a hearing that would be void (GOVERNANCE.md)."""
