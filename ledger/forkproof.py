"""Proof that an author equivocated: two validly signed, different entries at one sequence.

A node only appends to its own feed, so the only way two entries can share (author, seq) is that
the author signed both: a bug, a restored backup that re-used sequence numbers, or malice. The
proof is self-contained and shareable: any node can check it with nothing but the two entries.

Bytes: canonical JSON {"a": hex(entry), "b": hex(entry), "kind": "gibsey-fork-proof", "v": 1}
with a's hash < b's hash, so the same fork always yields the same proof bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import canonical
from .entry import MAX_ENTRY_BYTES, Entry, parse
from .errors import Rejected, RejectReason

KIND = "gibsey-fork-proof"
MAX_PROOF_BYTES = 4 * MAX_ENTRY_BYTES + 256


@dataclass(frozen=True, slots=True)
class ForkProof:
    a: Entry
    b: Entry

    @property
    def author(self) -> bytes:
        return self.a.author

    @property
    def seq(self) -> int:
        return self.a.seq

    def to_bytes(self) -> bytes:
        return canonical.encode(
            {"a": self.a.raw.hex(), "b": self.b.raw.hex(), "kind": KIND, "v": 1}
        )


def make(x: Entry, y: Entry) -> ForkProof:
    """Build a proof from two entries already verified; raises Rejected if they are no fork."""
    if x.author != y.author or x.seq != y.seq or x.hash == y.hash:
        raise Rejected(RejectReason.BAD_FORK_PROOF, "need two different entries, same author+seq")
    return ForkProof(x, y) if x.hash < y.hash else ForkProof(y, x)


def from_bytes(data: bytes) -> ForkProof:
    """Parse and fully verify a proof (both signatures); raises Rejected(BAD_FORK_PROOF)."""
    if len(data) > MAX_PROOF_BYTES:
        raise Rejected(RejectReason.BAD_FORK_PROOF, f"{len(data)} bytes is too large")
    try:
        obj = canonical.decode(data)
    except canonical.CanonicalError as exc:
        raise Rejected(RejectReason.BAD_FORK_PROOF, str(exc)) from exc
    if (
        type(obj) is not dict
        or obj.keys() != {"a", "b", "kind", "v"}
        or obj["kind"] != KIND
        or obj["v"] != 1
        or type(obj["a"]) is not str
        or type(obj["b"]) is not str
    ):
        raise Rejected(RejectReason.BAD_FORK_PROOF, "not a fork proof object")
    try:
        a, b = parse(bytes.fromhex(obj["a"])), parse(bytes.fromhex(obj["b"]))
    except (ValueError, Rejected) as exc:  # a bad signature or malformed entry voids the proof
        raise Rejected(RejectReason.BAD_FORK_PROOF, f"entry: {exc}") from exc
    proof = make(a, b)
    if proof.a.hash != a.hash:
        raise Rejected(RejectReason.BAD_FORK_PROOF, "entries not in canonical order")
    return proof
