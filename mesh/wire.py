"""The mesh's messages: ZeroMQ multipart frames, with every size bounded.

Frame 0 is the kind, one ASCII byte; the rest depend on it:

    S  sync     vv, forks, advertise-endpoint     (dialer -> listener: "this is what I hold")
    H  heads    vv, forks, flags                  (listener -> dialer, closes a round)
    E  entries  entry, entry, ...                 (either way; each frame one entry's wire bytes)
    F  forks    proof, proof, ...                 (either way; each frame one fork proof)
    T  traced   traces, entry, entry, ...         (E, sent when tracing is on and a visitor's
                                                   turn appended some of the entries)

vv (a version vector) is a run of 48-byte records: author (32 bytes) | seq (u64, big-endian) |
the first 8 bytes of the hash of the entry at that seq - enough to see that two nodes hold
different entries at one seq (a fork; the proof itself is checked in full by the ledger).
forks is a run of 40-byte records: author | seq, one per fork proof held.
Entries travel as their exact bytes: nothing is re-encoded on the way. In format v2 only a
group's last entry is signed (ledger/CANONICAL.md): a sender sends each group whole, up to its
head, and a receiver holds the group's first entries pending until the head arrives, in this
message or a later one. A fork proof across groups carries both chain segments; a group's
bound in bytes (ledger/entry.py MAX_GROUP_BYTES) keeps it within MAX_FRAME.
traces (T only) is a run of 57-byte records: the index of an entry in the message (u16) | the
W3C traceparent of the turn that appended it (55 ASCII bytes), so the peer's import is a span
of that turn's trace (core/trace.py). The context is beside the entries, never in them: a signed
entry is the same bytes whether or not its turn was traced.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from gibsey.core.trace import TRACEPARENT_LEN, valid_traceparent
from gibsey.ledger.entry import MAX_ENTRY_BYTES
from gibsey.ledger.forkproof import MAX_PROOF_BYTES

SYNC, HEADS, ENTRIES, FORKS, TRACED = b"S", b"H", b"E", b"F", b"T"
KINDS = frozenset({SYNC, HEADS, ENTRIES, FORKS, TRACED})

MAX_FEEDS = 4096  # feeds in one version vector
MAX_BATCH = 256  # entries (or proofs) in one E/F message
MAX_BATCH_BYTES = 512 * 1024
MAX_ROUND = 2048  # entries sent to one peer per round; the rest waits for the next round
# And their bytes, at most (at least one entry a round): 2,048 of a story's ~4 KiB entries were
# 8 MB on their way to a catching-up node at once, on top of what it was importing.
MAX_ROUND_BYTES = 4 * MAX_BATCH_BYTES
MAX_PROOFS_PER_MSG = 8
# ZMQ_MAXMSGSIZE (per frame): a peer sending a larger frame is disconnected by libzmq itself.
MAX_FRAME = max(MAX_PROOF_BYTES, MAX_FEEDS * 48, MAX_ENTRY_BYTES) + 1024
MAX_FRAMES = MAX_BATCH + 2
MAX_ENDPOINT = 256
FLAG_MORE = 1

_VV = struct.Struct(">32sQ8s")
_FORK = struct.Struct(">32sQ")
_TRACE = struct.Struct(f">H{TRACEPARENT_LEN}s")

VersionVector = dict[bytes, tuple[int, bytes]]  # author -> (seq, hash8)
ForkKeys = set[tuple[bytes, int]]


class WireError(ValueError):
    """A message that does not follow this format (a strike against its sender)."""


def encode_vv(vv: VersionVector) -> bytes:
    return b"".join(_VV.pack(a, s, h[:8]) for a, (s, h) in sorted(vv.items()))


def decode_vv(data: bytes) -> VersionVector:
    if len(data) % _VV.size or len(data) // _VV.size > MAX_FEEDS:
        raise WireError(f"version vector of {len(data)} bytes")
    out: VersionVector = {}
    for author, seq, h8 in _VV.iter_unpack(data):
        if seq < 1 or author in out:
            raise WireError("version vector with seq 0 or a repeated feed")
        out[author] = (seq, h8)
    return out


def encode_forks(keys: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(_FORK.pack(a, s) for a, s in sorted(keys))


def decode_forks(data: bytes) -> ForkKeys:
    if len(data) % _FORK.size or len(data) // _FORK.size > MAX_FEEDS:
        raise WireError(f"fork list of {len(data)} bytes")
    return {(a, s) for a, s in _FORK.iter_unpack(data)}


def encode_traces(traces: dict[int, str]) -> bytes:
    """index in the message -> traceparent, as T's traces frame."""
    return b"".join(_TRACE.pack(i, tp.encode()) for i, tp in sorted(traces.items()))


def decode_traces(data: bytes, entries: int) -> dict[int, str]:
    if not data or len(data) % _TRACE.size or len(data) // _TRACE.size > entries:
        raise WireError(f"traces of {len(data)} bytes for {entries} entries")
    out: dict[int, str] = {}
    for index, raw in _TRACE.iter_unpack(data):
        traceparent = raw.decode("ascii", "replace")
        if index >= entries or index in out or not valid_traceparent(traceparent):
            raise WireError(f"trace record {index}: not an entry's index with a traceparent")
        out[index] = traceparent
    return out


def check(frames: list[bytes]) -> bytes:
    """The kind of a message after its shape checks; raises WireError."""
    if not frames or frames[0] not in KINDS:
        raise WireError("unknown message kind")
    if len(frames) > MAX_FRAMES:
        raise WireError(f"{len(frames)} frames")
    kind = frames[0]
    if kind == SYNC and (len(frames) != 4 or len(frames[3]) > MAX_ENDPOINT):
        raise WireError("sync needs vv, forks, endpoint")
    if kind == HEADS and (len(frames) != 4 or len(frames[3]) != 1):
        raise WireError("heads needs vv, forks, flags")
    if kind == ENTRIES and not 2 <= len(frames) <= MAX_BATCH + 1:
        raise WireError("entries: 1..MAX_BATCH entries")
    if kind == TRACED and not 3 <= len(frames) <= MAX_BATCH + 2:
        raise WireError("traced entries: traces, then 1..MAX_BATCH entries")
    if kind == FORKS and not 2 <= len(frames) <= MAX_PROOFS_PER_MSG + 1:
        raise WireError("forks: 1..MAX_PROOFS_PER_MSG proofs")
    return kind


def batches(items: list[bytes], max_items: int = MAX_BATCH) -> list[list[bytes]]:
    """Split items into messages of at most max_items and MAX_BATCH_BYTES each."""
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    size = 0
    for item in items:
        if cur and (len(cur) >= max_items or size + len(item) > MAX_BATCH_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += len(item)
    if cur:
        out.append(cur)
    return out
