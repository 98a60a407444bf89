"""Proof that an author equivocated: two different entries at one sequence, both vouched for.

A node only appends to its own feed, so the only way two entries can share (author, seq) is that
the author signed both: a bug, a restored backup that re-used sequence numbers, or malice. The
proof is self-contained and shareable: any node can check it with nothing but its bytes.

An entry is vouched for by its own signature, or (format v2, an unsigned entry) by the signed
head of its group: each side of the proof is then a chain segment, the conflicting entry first,
then the entries after it up to and including the first signed one (at most MAX_GROUP in all).

Bytes, with the first entries' hashes ordered (a < b), so one fork always yields one proof:

    v1 (both sides one signed entry):  {"a": hex(entry), "b": hex(entry), "kind": KIND, "v": 1}
    v2 (either side a segment):        {"a": [hex(entry), ...], "b": [...], "kind": KIND, "v": 2}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from . import canonical
from .entry import MAX_ENTRY_BYTES, MAX_GROUP, MAX_GROUP_BYTES, Entry, parse, run_too_long
from .errors import Rejected, RejectReason

KIND = "gibsey-fork-proof"
# Two segments, each at most MAX_GROUP_BYTES of unsigned entries and a head, in hex (twice their
# bytes), plus the JSON around them: ~161 KiB, within a mesh frame (mesh/wire.py's MAX_FRAME).
MAX_PROOF_BYTES = 2 * (2 * (MAX_GROUP_BYTES + MAX_ENTRY_BYTES) + 3 * MAX_GROUP) + 256


@dataclass(frozen=True, slots=True)
class ForkProof:
    a: Entry  # the two conflicting entries (a.hash < b.hash)
    b: Entry
    a_chain: tuple[Entry, ...] = ()  # entries after a, to the signed head vouching for it
    b_chain: tuple[Entry, ...] = ()

    @property
    def author(self) -> bytes:
        return self.a.author

    @property
    def seq(self) -> int:
        return self.a.seq

    def to_bytes(self) -> bytes:
        if not self.a_chain and not self.b_chain:
            return canonical.encode(
                {"a": self.a.raw.hex(), "b": self.b.raw.hex(), "kind": KIND, "v": 1}
            )
        a = [e.raw.hex() for e in (self.a, *self.a_chain)]
        b = [e.raw.hex() for e in (self.b, *self.b_chain)]
        return canonical.encode({"a": a, "b": b, "kind": KIND, "v": 2})


def check_segment(segment: Sequence[Entry]) -> str | None:
    """What is wrong with `segment` as a vouched-for chain (None if nothing): consecutive
    entries of one feed, each `prev` the hash of the one before, unsigned up to the last, which
    is signed; at most MAX_GROUP entries, the unsigned ones at most MAX_GROUP_BYTES. Signatures
    are checked by whoever parsed them."""
    if not segment or run_too_long(len(segment) - 1, sum(len(e.raw) for e in segment[:-1])):
        return f"a segment holds 1 to {MAX_GROUP} entries ({MAX_GROUP_BYTES} B before its head)"
    for before, after in pairwise(segment):
        if before.signed:
            return f"seq {before.seq} is signed but not the segment's last"
        if (
            after.author != before.author
            or after.seq != before.seq + 1
            or after.prev != before.hash
        ):
            return f"seq {after.seq} does not chain to seq {before.seq}"
    if not segment[-1].signed:
        return "the segment does not end in a signed entry"
    return None


def make(
    x: Entry, y: Entry, x_chain: Sequence[Entry] = (), y_chain: Sequence[Entry] = ()
) -> ForkProof:
    """Build a proof from two entries already vouched for (each followed by its chain to its
    signed head, empty if it is signed itself); raises Rejected if they are no fork."""
    if x.author != y.author or x.seq != y.seq or x.hash == y.hash:
        raise Rejected(RejectReason.BAD_FORK_PROOF, "need two different entries, same author+seq")
    for seg in ((x, *x_chain), (y, *y_chain)):
        problem = check_segment(seg)
        if problem is not None:
            raise Rejected(RejectReason.BAD_FORK_PROOF, problem)
    if x.hash < y.hash:
        return ForkProof(x, y, tuple(x_chain), tuple(y_chain))
    return ForkProof(y, x, tuple(y_chain), tuple(x_chain))


def _segment(value: Any, version: int) -> list[Entry]:
    """Parse one side (signatures verified); raises Rejected(BAD_FORK_PROOF)."""
    hexes = [value] if version == 1 else value
    if type(hexes) is not list or not all(type(h) is str for h in hexes):
        raise Rejected(RejectReason.BAD_FORK_PROOF, "not a fork proof object")
    if not 1 <= len(hexes) <= MAX_GROUP:
        raise Rejected(RejectReason.BAD_FORK_PROOF, f"a segment holds 1 to {MAX_GROUP} entries")
    try:
        return [parse(bytes.fromhex(h)) for h in hexes]
    except (ValueError, Rejected) as exc:  # a bad signature or malformed entry voids the proof
        raise Rejected(RejectReason.BAD_FORK_PROOF, f"entry: {exc}") from exc


def from_bytes(data: bytes) -> ForkProof:
    """Parse and fully verify a proof (signatures, chains); raises Rejected(BAD_FORK_PROOF)."""
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
        or obj["v"] not in (1, 2)
    ):
        raise Rejected(RejectReason.BAD_FORK_PROOF, "not a fork proof object")
    a, b = _segment(obj["a"], obj["v"]), _segment(obj["b"], obj["v"])
    proof = make(a[0], b[0], a[1:], b[1:])
    if proof.a.hash != a[0].hash:
        raise Rejected(RejectReason.BAD_FORK_PROOF, "entries not in canonical order")
    if proof.to_bytes() != data:  # one fork, one proof: a v2 proof of two signed entries is v1
        raise Rejected(RejectReason.BAD_FORK_PROOF, "not the proof's one encoding")
    return proof
