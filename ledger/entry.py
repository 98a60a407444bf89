"""One feed entry: its fields, its wire bytes, its signature (if it carries one) and its hash.

Wire bytes (specified in CANONICAL.md):

    signed entry   = payload || signature   (signature: the last 64 bytes)
    unsigned entry = payload                (format v2, "head": false; vouched for by the
                                             signed head of its group through the prev hashes)
    payload = canonical JSON of {"author","body",["head",]"lamport","prev","seq","type","v","wall"}
    signature = ed25519(author key, DOMAIN || payload)
    hash = sha256(entry)

The signature is not inside the JSON. The classic canonical-JSON pitfall (Secure Scuttlebutt:
"remove the signature field, re-serialise, and hope you print what the signer printed") cannot
happen: the signed bytes are literally the bytes on the wire, minus the fixed-size tail.

Format v2 signs groups: only a group's last entry (its head) carries a signature; each entry
commits to its predecessor's hash, so the head's signature covers every byte of the entries
before it. A group holds at most MAX_GROUP entries (and MAX_GROUP_BYTES of unsigned ones), so
proving one entry offline needs at most MAX_GROUP - 1 entries after it. v1 entries (every one
signed) stay valid.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import bodies, canonical
from .errors import Rejected, RejectReason

# Domain separation: the node key also signs other things (and CurveZMQ keys derive from it);
# this prefix makes a ledger signature useless anywhere else and vice versa.
DOMAIN = b"gibsey/ledger/v1\x00"
FORMAT_VERSION = 2  # what this release writes; it reads v1 and v2
SIG_LEN = 64
KEY_LEN = 32
HASH_LEN = 32
# Limits keep one feed entry small enough for a Pi Zero to gossip and a peer to buffer.
MAX_ENTRY_BYTES = 8192
MAX_BODY_BYTES = 4096
# A group: at most this many entries, the last one signed; so at most MAX_GROUP - 1 unsigned
# entries in a row. Bounds what a receiver holds pending and what proves one entry offline.
MAX_GROUP = 64
# ... and the unsigned entries of a group hold at most this many bytes in all: a fork proof's
# two segments (in hex) then fit in a mesh frame (mesh/wire.py), and a pending run stays small.
MAX_GROUP_BYTES = 32 * 1024


def run_too_long(count: int, size: int) -> bool:
    """Whether `count` unsigned entries in a row, `size` bytes in all, are more than one signed
    head may vouch for (CANONICAL.md section 1)."""
    return count > MAX_GROUP - 1 or size > MAX_GROUP_BYTES


_FIELDS_V1 = frozenset({"author", "body", "lamport", "prev", "seq", "type", "v", "wall"})
_FIELDS_V2 = _FIELDS_V1 | {"head"}

OrderKey = tuple[int, bytes, int]


@dataclass(frozen=True, slots=True)
class Entry:
    author: bytes  # 32-byte ed25519 public key
    seq: int  # 1, 2, 3, ... within the author's feed
    prev: bytes | None  # hash of entry seq-1; None (JSON null) for seq 1
    lamport: int  # Lamport clock: above every entry the author had seen, >= 1
    wall: int  # advisory wall time, ms since the Unix epoch; never used for decisions
    type: str
    body: dict[str, Any]
    signature: bytes  # b"" for an unsigned (v2, not a group's head) entry
    raw: bytes  # the wire bytes: payload || signature
    hash: bytes  # sha256(raw)

    @property
    def payload(self) -> bytes:
        return self.raw[: -len(self.signature)] if self.signature else self.raw

    @property
    def signed(self) -> bool:
        """Whether this entry carries its author's signature (v1, or a v2 group's head)."""
        return bool(self.signature)

    @property
    def author_hex(self) -> str:
        return self.author.hex()

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def order_key(self) -> OrderKey:
        """The total order every node folds entries in, independent of arrival order."""
        return (self.lamport, self.author, self.seq)


def payload_object(
    author: bytes,
    seq: int,
    prev: bytes | None,
    lamport: int,
    wall: int,
    type_: str,
    body: dict[str, Any],
    *,
    head: bool = True,
    version: int = FORMAT_VERSION,
) -> dict[str, Any]:
    obj = {
        "author": author.hex(),
        "body": body,
        "lamport": lamport,
        "prev": prev.hex() if prev is not None else None,
        "seq": seq,
        "type": type_,
        "v": version,
        "wall": wall,
    }
    if version != 1:
        obj["head"] = head
    return obj


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def create(
    key: SigningKey,
    *,
    seq: int,
    prev: bytes | None,
    lamport: int,
    type_: str,
    body: dict[str, Any],
    wall: int | None = None,
    head: bool = True,
    version: int = FORMAT_VERSION,
) -> Entry:
    """Build an entry, signed if `head` (every v1 entry is); raises Rejected (the same reasons
    an importer would use). An unsigned entry (`head=False`, v2 only) counts only once a
    signed head of its feed, at most MAX_GROUP - 1 entries later, chains to it."""
    if type_ not in bodies.KNOWN_TYPES:
        raise Rejected(RejectReason.UNKNOWN_TYPE, type_)
    try:
        canonical.check(body)
        bodies.validate(type_, body)
    except (canonical.CanonicalError, bodies.BodyError) as exc:
        raise Rejected(RejectReason.INVALID_BODY, str(exc)) from exc
    body_bytes = canonical.encode_checked(body)
    if len(body_bytes) > MAX_BODY_BYTES:
        raise Rejected(RejectReason.BODY_TOO_LARGE, f"{len(body_bytes)} > {MAX_BODY_BYTES}")
    wall = now_ms() if wall is None else wall
    if (
        # Exact ints: the payload writes them with %d, which would print 3.7 as 3.
        type(seq) is not int
        or type(lamport) is not int
        or type(wall) is not int
        or seq < 1
        or (seq == 1) != (prev is None)
        or not 1 <= lamport <= canonical.MAX_SAFE_INT
        or not 0 <= wall <= canonical.MAX_SAFE_INT
        or seq > canonical.MAX_SAFE_INT
        or version not in (1, 2)
        or (version == 1 and not head)
    ):
        raise ValueError(f"bad entry seq={seq} prev={prev!r} lamport={lamport} v={version}")
    author = bytes(key.verify_key)
    payload = _payload_bytes(author, body_bytes, head, lamport, prev, seq, type_, version, wall)
    signature = key.sign(DOMAIN + payload).signature if head else b""
    raw = payload + signature
    if len(raw) > MAX_ENTRY_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"{len(raw)} > {MAX_ENTRY_BYTES}")
    return Entry(
        author, seq, prev, lamport, wall, type_, body, signature, raw, hashlib.sha256(raw).digest()
    )


# The payload's fields in key order; the body, `head` and `prev` are put in already encoded.
_PAYLOAD = (
    b'{"author":"%s","body":%s%s,"lamport":%d,"prev":%s,"seq":%d,"type":"%s","v":%d,"wall":%d}'
)


def _payload_bytes(
    author: bytes,
    body_bytes: bytes,
    head: bool,
    lamport: int,
    prev: bytes | None,
    seq: int,
    type_: str,
    version: int,
    wall: int,
) -> bytes:
    """The payload's canonical encoding, assembled directly: its fields are fixed and already
    in key order, and everything but the body is hex, a small integer, a boolean or a known
    ASCII type name, which canonical JSON writes verbatim. Equal to
    canonical.encode(payload_object(..)) - the pinned-bytes tests and parse() (which
    re-encodes and compares) both hold it to that."""
    head_field = b"" if version == 1 else (b',"head":true' if head else b',"head":false')
    prev_field = b"null" if prev is None else b'"%s"' % prev.hex().encode()
    # One bytes formatting (%d writes an int as canonical JSON does): 0.4 us, a join 0.6.
    return _PAYLOAD % (
        author.hex().encode(),
        body_bytes,
        head_field,
        lamport,
        prev_field,
        seq,
        type_.encode(),
        version,
        wall,
    )


def _check_body_size(body: dict[str, Any], payload_len: int) -> None:
    # The body's bytes are part of the payload's, so a payload within the body limit needs no
    # separate encoding of the body (saves one JSON encoding per imported entry).
    if payload_len <= MAX_BODY_BYTES:
        return
    body_len = len(canonical.encode_checked(body))
    if body_len > MAX_BODY_BYTES:
        raise Rejected(RejectReason.BODY_TOO_LARGE, f"{body_len} > {MAX_BODY_BYTES} bytes")


def _hex_bytes(value: Any, length: int, name: str) -> bytes:
    if type(value) is not str or len(value) != 2 * length or value != value.lower():
        raise Rejected(RejectReason.MALFORMED, f"{name} must be {length * 2} lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Rejected(RejectReason.MALFORMED, f"{name} is not hex") from None


def _int_field(obj: dict[str, Any], name: str, minimum: int) -> int:
    value = obj[name]
    if type(value) is not int or value < minimum:
        raise Rejected(RejectReason.MALFORMED, f"{name} must be an integer >= {minimum}")
    return value


def _decode_object(payload: bytes) -> Any:
    try:
        return canonical.decode(payload)
    except canonical.NotCanonicalError as exc:
        raise Rejected(RejectReason.NOT_CANONICAL, str(exc)) from exc
    except canonical.CanonicalError as exc:
        raise Rejected(RejectReason.MALFORMED, str(exc)) from exc


def _check_fields(obj: Any, signed: bool) -> None:
    """The payload object has exactly its version's fields, and `head` says whether a
    signature follows it (v1: always)."""
    if type(obj) is not dict:
        raise Rejected(RejectReason.MALFORMED, "payload must be an object")
    version = obj.get("v")
    fields = {1: _FIELDS_V1, 2: _FIELDS_V2}.get(version) if type(version) is int else None
    if fields is None:
        raise Rejected(RejectReason.MALFORMED, f"format v={version!r}, we speak 1 and 2")
    if obj.keys() != fields:
        raise Rejected(RejectReason.MALFORMED, f"payload v{version} must have {sorted(fields)}")
    if version == 1 and not signed:
        raise Rejected(RejectReason.MALFORMED, "a v1 entry carries a signature")
    if version == 2 and obj["head"] is not signed:
        raise Rejected(RejectReason.MALFORMED, "head must be true with a signature, else false")


def _split(raw: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """(payload, signature, payload object) of an entry's wire bytes.

    An unsigned entry is a whole canonical object; a signed entry never is (its payload, one
    complete object, is followed by 64 more bytes), and the first 64 bytes short of an
    unsigned entry are never one (its last byte closes the outer object). So: the whole entry
    if it decodes as an object, else the entry minus its 64-byte signature."""
    if raw[-1:] == b"}":
        try:
            whole = canonical.decode(raw)
        except canonical.CanonicalError:
            whole = None
        if type(whole) is dict:
            _check_fields(whole, signed=False)
            return raw, b"", whole
    if len(raw) <= SIG_LEN + 2:
        raise Rejected(RejectReason.MALFORMED, f"only {len(raw)} bytes")
    payload = raw[:-SIG_LEN]
    obj = _decode_object(payload)
    _check_fields(obj, signed=True)
    return payload, raw[-SIG_LEN:], obj


def _prev_field(prev_raw: Any, seq: int) -> bytes | None:
    """The previous entry's hash: null for a feed's first entry, a hash for every other."""
    if seq == 1:
        if prev_raw is not None:
            raise Rejected(RejectReason.MALFORMED, "seq 1 must have prev null")
        return None
    return _hex_bytes(prev_raw, HASH_LEN, "prev")


def parse(raw: bytes, *, verify: bool = True) -> Entry:
    """Decode wire bytes, checking everything that needs no other entry.

    Checks size, canonical form, fields, known type, body shape and size, and (unless
    `verify=False`, used only when re-reading our own already-verified store) the signature
    of a signed entry. An unsigned entry (`signed` False) is NOT authenticated by parsing: it
    is vouched for only by its group's signed head (the store and forkproof check that).
    Chain checks (seq, prev, lamport, groups) need the store and live there.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    if len(raw) > MAX_ENTRY_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"{len(raw)} > {MAX_ENTRY_BYTES} bytes")
    if len(raw) < 2:
        raise Rejected(RejectReason.MALFORMED, f"only {len(raw)} bytes")
    payload, signature, obj = _split(raw)
    author = _hex_bytes(obj["author"], KEY_LEN, "author")
    seq = _int_field(obj, "seq", 1)
    lamport = _int_field(obj, "lamport", 1)
    wall = _int_field(obj, "wall", 0)
    prev = _prev_field(obj["prev"], seq)
    type_ = obj["type"]
    if type(type_) is not str:
        raise Rejected(RejectReason.MALFORMED, "type must be a string")
    if type_ not in bodies.KNOWN_TYPES:
        raise Rejected(RejectReason.UNKNOWN_TYPE, repr(type_))
    body = obj["body"]
    _check_body_size(body, len(payload))  # size before shape: report an oversized body as such
    try:
        bodies.validate(type_, body)
    except bodies.BodyError as exc:
        raise Rejected(RejectReason.INVALID_BODY, str(exc)) from exc
    if verify and signature:
        try:
            VerifyKey(author).verify(DOMAIN + payload, signature)
        except (BadSignatureError, ValueError) as exc:
            raise Rejected(RejectReason.BAD_SIGNATURE, f"seq {seq} of {author.hex()[:16]}") from exc
    return Entry(
        author, seq, prev, lamport, wall, type_, body, signature, raw, hashlib.sha256(raw).digest()
    )


def verify_signature(entry: Entry) -> bool:
    """Whether `entry` carries a good signature of its author (False for an unsigned one)."""
    if not entry.signature:
        return False
    try:
        VerifyKey(entry.author).verify(DOMAIN + entry.payload, entry.signature)
    except (BadSignatureError, ValueError):
        return False
    return True


# An entry's fields in Entry's order, or (reason, detail) of its rejection: what a worker process
# sends back (plain tuples pickle in ~1.5 us an entry; Entry objects and exceptions cost more,
# and an exception with required arguments does not unpickle at all).
EntryFields = tuple[bytes, int, bytes | None, int, int, str, dict[str, Any], bytes, bytes, bytes]
ParsedFields = EntryFields | tuple[str, str]


def parse_many(raws: list[bytes]) -> list[ParsedFields]:
    """parse() of each of `raws`, signatures verified (run in a worker process on import)."""
    out: list[ParsedFields] = []
    for raw in raws:
        try:
            e = parse(raw)
        except Rejected as exc:
            out.append((exc.reason.value, exc.detail))
            continue
        out.append(
            (e.author, e.seq, e.prev, e.lamport, e.wall, e.type, e.body, e.signature, e.raw, e.hash)
        )
    return out


def from_fields(fields: ParsedFields) -> Entry | Rejected:
    """What parse_many() sent back, as the Entry or the Rejected parse() gave."""
    if len(fields) == 2:
        return Rejected(RejectReason(fields[0]), fields[1])
    return Entry(*fields)
