"""Helpers for tests, benchmarks and the mesh's tests: write a foreign feed without a store.

`FeedWriter` plays another node: it signs a chain of entries exactly as a node would, with an
explicit Lamport clock when a test needs to control the fold order. `forge` signs an arbitrary
payload object (or raw bytes) so tests can build entries that break one rule at a time.
"""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from . import canonical
from .economy import EntryEffect
from .entry import DOMAIN, FORMAT_VERSION, Entry, create
from .ledger import Ledger


class FeedWriter:
    def __init__(self, seed: int | bytes) -> None:
        raw_seed = seed if isinstance(seed, bytes) else seed.to_bytes(32, "big")
        self.key = SigningKey(raw_seed)
        self.author = bytes(self.key.verify_key)
        self.seq = 0
        self.prev: bytes | None = None
        self.lamport = 0
        self.entries: list[Entry] = []

    def observe(self, lamport: int) -> None:
        """Learn of an entry elsewhere with this Lamport clock (as a sync would)."""
        self.lamport = max(self.lamport, lamport)

    def next(
        self,
        type_: str,
        body: dict[str, Any],
        *,
        lamport: int | None = None,
        wall: int = 0,
        head: bool = True,
        version: int = FORMAT_VERSION,
    ) -> Entry:
        """The next entry of the feed: signed unless `head` is False (format v2: a group's
        entries before its head)."""
        lam = self.lamport + 1 if lamport is None else lamport
        e = create(
            self.key,
            seq=self.seq + 1,
            prev=self.prev,
            lamport=lam,
            type_=type_,
            body=body,
            wall=wall,
            head=head,
            version=version,
        )
        self.seq, self.prev, self.lamport = e.seq, e.hash, max(self.lamport, lam)
        self.entries.append(e)
        return e


def sign_payload(key: SigningKey, payload: bytes) -> bytes:
    """Wire bytes for an arbitrary payload, correctly signed (for forging bad entries)."""
    return payload + key.sign(DOMAIN + payload).signature


def forge(key: SigningKey, obj: dict[str, Any]) -> bytes:
    """Sign the canonical encoding of any payload object, valid or not."""
    return sign_payload(key, canonical.encode(obj))


def effect_of(ledger: Ledger, e: Entry) -> EntryEffect:
    """What `e` did in the ledger's view (it must be folded: a test's own entry)."""
    effect = ledger.view().effect(e)
    assert effect is not None, f"{e.hash_hex} is not folded"
    return effect
