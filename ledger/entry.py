"""One feed entry: its fields, its wire bytes, its signature and its hash.

Wire bytes (specified in CANONICAL.md):

    entry = payload || signature            (signature: the last 64 bytes)
    payload = canonical JSON of {"author","body","lamport","prev","seq","type","v","wall"}
    signature = ed25519(author key, DOMAIN || payload)
    hash = sha256(entry)

The signature is not inside the JSON. The classic canonical-JSON pitfall (Secure Scuttlebutt:
"remove the signature field, re-serialise, and hope you print what the signer printed") cannot
happen: the signed bytes are literally the bytes on the wire, minus the fixed-size tail.
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
FORMAT_VERSION = 1
SIG_LEN = 64
KEY_LEN = 32
HASH_LEN = 32
# Limits keep one feed entry small enough for a Pi Zero to gossip and a peer to buffer.
MAX_ENTRY_BYTES = 8192
MAX_BODY_BYTES = 4096
_FIELDS = frozenset({"author", "body", "lamport", "prev", "seq", "type", "v", "wall"})

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
    signature: bytes
    raw: bytes  # the wire bytes: payload || signature
    hash: bytes  # sha256(raw)

    @property
    def payload(self) -> bytes:
        return self.raw[:-SIG_LEN]

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
) -> dict[str, Any]:
    return {
        "author": author.hex(),
        "body": body,
        "lamport": lamport,
        "prev": prev.hex() if prev is not None else None,
        "seq": seq,
        "type": type_,
        "v": FORMAT_VERSION,
        "wall": wall,
    }


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
) -> Entry:
    """Build and sign an entry; raises Rejected (the same reasons an importer would use)."""
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
        seq < 1
        or (seq == 1) != (prev is None)
        or not 1 <= lamport <= canonical.MAX_SAFE_INT
        or not 0 <= wall <= canonical.MAX_SAFE_INT
        or seq > canonical.MAX_SAFE_INT
    ):
        raise ValueError(f"bad chain position seq={seq} prev={prev!r} lamport={lamport}")
    author = bytes(key.verify_key)
    # The payload's canonical encoding, assembled directly: its fields are fixed and already
    # in key order, and everything but the body is hex, a small integer or a known ASCII type
    # name, which canonical JSON writes verbatim. Equal to canonical.encode(payload_object(..))
    # - the pinned-bytes test and parse() (which re-encodes and compares) both hold it to that.
    payload = b"".join(
        (
            b'{"author":"',
            author.hex().encode(),
            b'","body":',
            body_bytes,
            b',"lamport":',
            str(lamport).encode(),
            b',"prev":',
            b"null" if prev is None else b'"' + prev.hex().encode() + b'"',
            b',"seq":',
            str(seq).encode(),
            b',"type":"',
            type_.encode(),
            b'","v":',
            str(FORMAT_VERSION).encode(),
            b',"wall":',
            str(wall).encode(),
            b"}",
        )
    )
    signature = key.sign(DOMAIN + payload).signature
    raw = payload + signature
    if len(raw) > MAX_ENTRY_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"{len(raw)} > {MAX_ENTRY_BYTES}")
    return Entry(
        author, seq, prev, lamport, wall, type_, body, signature, raw, hashlib.sha256(raw).digest()
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


def _decode_payload(payload: bytes) -> dict[str, Any]:
    """The payload's object: canonical, with exactly the entry's fields, in our format."""
    try:
        obj = canonical.decode(payload)
    except canonical.NotCanonicalError as exc:
        raise Rejected(RejectReason.NOT_CANONICAL, str(exc)) from exc
    except canonical.CanonicalError as exc:
        raise Rejected(RejectReason.MALFORMED, str(exc)) from exc
    if type(obj) is not dict or obj.keys() != _FIELDS:
        raise Rejected(RejectReason.MALFORMED, f"payload must have exactly {sorted(_FIELDS)}")
    if obj["v"] != FORMAT_VERSION:
        raise Rejected(RejectReason.MALFORMED, f"format v={obj['v']!r}, we speak {FORMAT_VERSION}")
    return obj


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
    `verify=False`, used only when re-reading our own already-verified store) the signature.
    Chain checks (seq, prev, lamport) need the store and live there.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    if len(raw) > MAX_ENTRY_BYTES:
        raise Rejected(RejectReason.TOO_LARGE, f"{len(raw)} > {MAX_ENTRY_BYTES} bytes")
    if len(raw) <= SIG_LEN + 2:
        raise Rejected(RejectReason.MALFORMED, f"only {len(raw)} bytes")
    payload, signature = raw[:-SIG_LEN], raw[-SIG_LEN:]
    obj = _decode_payload(payload)
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
    if verify:
        try:
            VerifyKey(author).verify(DOMAIN + payload, signature)
        except (BadSignatureError, ValueError) as exc:
            raise Rejected(RejectReason.BAD_SIGNATURE, f"seq {seq} of {author.hex()[:16]}") from exc
    return Entry(
        author, seq, prev, lamport, wall, type_, body, signature, raw, hashlib.sha256(raw).digest()
    )


def verify_signature(entry: Entry) -> bool:
    try:
        VerifyKey(entry.author).verify(DOMAIN + entry.payload, entry.signature)
    except (BadSignatureError, ValueError):
        return False
    return True
