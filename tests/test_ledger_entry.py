"""Canonical encoding and single-entry checks (no store)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gibsey.ledger import canonical
from gibsey.ledger.entry import DOMAIN, SIG_LEN, create, parse, payload_object
from gibsey.ledger.errors import Rejected, RejectReason

SEED = bytes(range(32))

# The exact wire bytes of a known entry: if these change, every node's signatures and hashes
# change with them - that is a format break, not a refactor.
PINNED_PAYLOAD = (
    b'{"author":"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",'
    b'"body":{"actor":"london-fox","amount":5,"ritual":"read"},"lamport":1,"prev":null,'
    b'"seq":1,"type":"mint","v":1,"wall":1700000000000}'
)
PINNED_SIG = (
    "1113d0b6b8ad818feedbea747a163e94061522a28dcc1799fa0a6df7dc6c15b3"
    "3dfa0c1264d888fa3727cc95eebc08696ebce8705b737f9eaf71d9b1cffd8c03"
)
PINNED_HASH = "c7de6ae21b8b499f20725fa58b896613fbc42921589f035962196740e6fb62d3"


def pinned_entry() -> Any:
    """The pinned format v1 entry (every entry signed): still written on request, still read."""
    return create(
        SigningKey(SEED),
        seq=1,
        prev=None,
        lamport=1,
        type_="mint",
        body={"actor": "london-fox", "amount": 5, "ritual": "read"},
        wall=1_700_000_000_000,
        version=1,
    )


# Format v2: a group of two, seq 1 unsigned (the whole entry is its payload), seq 2 its head.
PINNED_V2_UNSIGNED = (
    b'{"author":"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",'
    b'"body":{"actor":"london-fox","amount":5,"ritual":"read"},"head":false,"lamport":1,'
    b'"prev":null,"seq":1,"type":"mint","v":2,"wall":1700000000000}'
)
PINNED_V2_UNSIGNED_HASH = "88ff4cabaf0a0f9bd46307cd85b9cc121ae2c4a2ad1a0aafd120de99aea334b4"
PINNED_V2_HEAD_PAYLOAD = (
    b'{"author":"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",'
    b'"body":{"actor":"london-fox","amount":5,"ritual":"read"},"head":true,"lamport":2,'
    b'"prev":"88ff4cabaf0a0f9bd46307cd85b9cc121ae2c4a2ad1a0aafd120de99aea334b4","seq":2,'
    b'"type":"mint","v":2,"wall":1700000000000}'
)
PINNED_V2_HEAD_SIG = (
    "21ee65dd5d9aeb33e247fa103da6ffb9ca8f953dc557faea754cb2e79c0b980f"
    "6d455587ca127c29e1e03e5ee2df6390ad02bef9000eb8c05de23e0bb6c20709"
)
PINNED_V2_HEAD_HASH = "dbe62111600fcfdbeb8e76df5a2a89895439194d3fda96db3d88c306ae864779"


def test_pinned_v2_group_bytes() -> None:
    body = {"actor": "london-fox", "amount": 5, "ritual": "read"}
    key = SigningKey(SEED)
    first = create(
        key,
        seq=1,
        prev=None,
        lamport=1,
        type_="mint",
        body=body,
        wall=1_700_000_000_000,
        head=False,
    )
    assert first.raw == first.payload == PINNED_V2_UNSIGNED and first.signature == b""
    assert first.hash.hex() == PINNED_V2_UNSIGNED_HASH
    head = create(
        key, seq=2, prev=first.hash, lamport=2, type_="mint", body=body, wall=1_700_000_000_000
    )
    assert head.payload == PINNED_V2_HEAD_PAYLOAD
    assert head.raw == PINNED_V2_HEAD_PAYLOAD + bytes.fromhex(PINNED_V2_HEAD_SIG)
    assert head.hash.hex() == PINNED_V2_HEAD_HASH
    key.verify_key.verify(DOMAIN + PINNED_V2_HEAD_PAYLOAD, head.signature)
    assert parse(first.raw) == first and not parse(first.raw).signed
    assert parse(head.raw) == head and parse(head.raw).signed


def test_pinned_entry_bytes() -> None:
    e = pinned_entry()
    assert e.payload == PINNED_PAYLOAD
    assert e.signature.hex() == PINNED_SIG
    assert e.raw == PINNED_PAYLOAD + bytes.fromhex(PINNED_SIG)
    assert e.hash.hex() == PINNED_HASH == hashlib.sha256(e.raw).hexdigest()
    # The signature covers DOMAIN || payload, nothing else.
    SigningKey(SEED).verify_key.verify(DOMAIN + PINNED_PAYLOAD, e.signature)


def test_parse_roundtrip_and_second_entry_links() -> None:
    first = pinned_entry()
    assert parse(first.raw) == first
    second = create(
        SigningKey(SEED),
        seq=2,
        prev=first.hash,
        lamport=7,
        type_="gift",
        body={"from": "london-fox", "to": "glyph-marrow", "amount": 3, "memo": "ü"},
        wall=5,
    )
    back = parse(second.raw)
    assert back == second and back.prev == first.hash
    assert b'"prev":"' + PINNED_HASH.encode() + b'"' in second.payload
    assert "ü".encode() in second.payload  # UTF-8 literal, not \u00fc


# ---- canonical JSON ---------------------------------------------------------------------------


def _ref_string(s: str) -> str:
    """RFC 8785 string serialisation, written out from the spec (CANONICAL.md section 2)."""
    short = {
        '"': '\\"',
        "\\": "\\\\",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
    }
    out = []
    for ch in s:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def reference_encode(v: Any) -> bytes:
    def enc(x: Any) -> str:
        if x is None:
            return "null"
        if x is True:
            return "true"
        if x is False:
            return "false"
        if type(x) is int:
            return str(x)
        if type(x) is str:
            return _ref_string(x)
        if type(x) is list:
            return "[" + ",".join(enc(i) for i in x) + "]"
        assert type(x) is dict
        # Keys sorted by Unicode code point (== by UTF-8 bytes).
        items = sorted(x.items(), key=lambda kv: kv[0].encode("utf-8"))
        return "{" + ",".join(_ref_string(k) + ":" + enc(val) for k, val in items) + "}"

    return enc(v).encode("utf-8")


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_fast_encoder_matches_reference_and_decodes_back(v: Any) -> None:
    data = canonical.encode(v)
    assert data == reference_encode(v)
    assert canonical.decode(data) == v


REFUSED = object()


def _reference_decode(data: bytes) -> Any:
    """What the spec accepts, from parts independent of canonical.py: the standard library's
    JSON parser (floats and NaN refused), the data model's integer range, and the reference
    encoder's bytes equal to the input (these values nest far less than MAX_DEPTH, which
    has its own tests). REFUSED: refused."""

    def refuse(text: str) -> Any:
        raise ValueError(text)

    def in_range(x: Any) -> bool:
        if type(x) is int:
            return abs(x) <= canonical.MAX_SAFE_INT
        inner = x.values() if type(x) is dict else x if type(x) is list else ()
        return all(in_range(i) for i in inner)

    try:
        value = json.loads(data.decode("utf-8"), parse_float=refuse, parse_constant=refuse)
        ok = in_range(value) and reference_encode(value) == data
        return value if ok else REFUSED
    except (ValueError, RecursionError):  # also not UTF-8, a lone surrogate (not encodable)
        return REFUSED


@settings(max_examples=400)  # most edits make plain garbage: enough of them to make a near miss
@given(
    values,
    st.fixed_dictionaries(
        {
            "sort_keys": st.booleans(),
            "ensure_ascii": st.booleans(),
            "indent": st.sampled_from([None, 0, 1]),
            "separators": st.sampled_from([(",", ":"), (", ", ": ")]),
        }
    ),
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.integers(0, 2),
            st.sampled_from(
                [
                    *(bytes([b]) for b in b'{}[]",:0-1 \\\n\x00\xff'),
                    b".0",
                    b"e5",
                    b"\\u0041",
                    b"\xc3\xa9",
                ]
            ),
        ),
        max_size=2,
    ),
)
def test_decode_accepts_exactly_the_bytes_the_spec_accepts(
    v: Any, style: dict[str, Any], edits: list[tuple[int, int, bytes]]
) -> None:
    """Any JSON writing of a value (keys in any order, spaces, newlines, \\u escapes), with up
    to two edits (a byte replaced or removed, a few bytes put in: a fraction, an exponent, an
    escape), is accepted, and decodes to the same value, exactly when the spec's reference
    says so."""
    data = bytearray(json.dumps(v, **style).encode())
    for at, how, chunk in edits:
        i = at % (len(data) + 1)
        if how == 0 and i < len(data):
            data[i : i + 1] = chunk[:1]
        elif how == 1 and i < len(data):
            del data[i]
        else:
            data[i:i] = chunk
    expected = _reference_decode(bytes(data))
    try:
        got = canonical.decode(bytes(data))
    except canonical.CanonicalError:
        got = REFUSED
    assert got == expected


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        float("nan"),
        float("inf"),
        {1: "x"},
        2**53,
        -(2**53),
        (1, 2),
        b"x",
        "\ud800",
        {"a": [{"b": 1.0}]},
    ],
)
def test_encode_rejects_outside_the_data_model(value: Any) -> None:
    with pytest.raises(canonical.CanonicalError):
        canonical.encode(value)


def test_encode_rejects_deep_nesting() -> None:
    v: Any = 1
    for _ in range(canonical.MAX_DEPTH + 2):
        v = [v]
    with pytest.raises(canonical.CanonicalError, match="deeper"):
        canonical.encode(v)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1.0}',
        b'{"a":1e2}',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":"\\ud800"}',
        b"\xff\xfe",
        b'{"a":1',
        b"",
        b'{"a":9007199254740992}',
        b'{"a":-9007199254740992}',
        b"[123456789012345678901]",
        b"[" * (canonical.MAX_DEPTH + 2) + b"1" + b"]" * (canonical.MAX_DEPTH + 2),
    ],
)
def test_decode_rejects_non_json_values(data: bytes) -> None:
    with pytest.raises(canonical.CanonicalError):
        canonical.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"b":1,"a":2}',
        b'{"a":1,"a":2}',
        b'{ "a":1}',
        b'{"a":-0}',
        b'{"a":"\\u0041"}',
        b'{"a":"\\/"}',
        b'{"a":1}\n',
    ],
)
def test_decode_rejects_non_canonical_forms(data: bytes) -> None:
    json.loads(data)  # each is valid JSON...
    with pytest.raises(canonical.NotCanonicalError):
        canonical.decode(data)  # ...but not the canonical form


# ---- single-entry rejections -------------------------------------------------------------------


def test_parse_reports_reason_per_fault() -> None:
    e = pinned_entry()
    key = SigningKey(SEED)

    def reason(raw: bytes) -> RejectReason:
        with pytest.raises(Rejected) as info:
            parse(raw)
        return info.value.reason

    flipped = e.raw[:-1] + bytes([e.raw[-1] ^ 1])
    assert reason(flipped) is RejectReason.BAD_SIGNATURE
    assert reason(b"\x00" * 100) is RejectReason.MALFORMED
    assert reason(b"{}") is RejectReason.MALFORMED
    assert reason(b"x" * 9000) is RejectReason.TOO_LARGE
    spaced = e.payload.replace(b'"seq":1', b'"seq": 1')
    assert reason(spaced + key.sign(DOMAIN + spaced).signature) is RejectReason.NOT_CANONICAL
    obj = payload_object(e.author, 1, None, 1, 0, "teleport", {"to": "moon"})
    p = canonical.encode(obj)
    assert reason(p + key.sign(DOMAIN + p).signature) is RejectReason.UNKNOWN_TYPE
    assert len(e.signature) == SIG_LEN


@given(
    memo=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    seq=st.integers(1, 2**53 - 1),
    lamport=st.integers(1, 2**53 - 1),
    wall=st.integers(0, 2**53 - 1),
    head=st.booleans(),
)
def test_created_payload_is_the_canonical_encoding(
    memo: str, seq: int, lamport: int, wall: int, head: bool
) -> None:
    # create() assembles the payload directly for speed; it must equal the canonical form.
    key = SigningKey(SEED)
    prev = None if seq == 1 else b"\x11" * 32
    body = {"from": "a", "to": "b", "amount": 1, "memo": memo}
    e = create(
        key, seq=seq, prev=prev, lamport=lamport, type_="gift", body=body, wall=wall, head=head
    )
    assert e.payload == canonical.encode(
        payload_object(e.author, seq, prev, lamport, wall, "gift", body, head=head)
    )
    assert parse(e.raw) == e


@pytest.mark.parametrize(
    "field", [{"seq": 2.0}, {"lamport": 3.7}, {"wall": 5.0}, {"lamport": True}, {"seq": "2"}]
)
def test_create_refuses_positions_that_are_not_integers(field: dict[str, Any]) -> None:
    # The payload writes them as integers: 3.7 must be refused, never signed as 3.
    args: dict[str, Any] = {"seq": 2, "lamport": 3, "wall": 5, **field}
    body = {"from": "a", "to": "b", "amount": 1}
    with pytest.raises(ValueError, match="bad entry"):
        create(SigningKey(SEED), prev=b"\x11" * 32, type_="gift", body=body, **args)
