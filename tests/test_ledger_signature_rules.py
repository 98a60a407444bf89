"""Exactly which Ed25519 signatures the ledger accepts (CANONICAL.md section 1).

The ledger checks signatures with PyNaCl, i.e. libsodium's crypto_sign_open. libsodium applies
RFC 8032 section 5.1.7 (S < L, canonical point encodings, the cofactorless equation
[S]B = R + [k]A) and refuses two more things: a public key A of small order and a signature
whose R is of small order ("[8]P is the neutral element"). A verifier written from RFC 8032
alone accepts signatures every node refuses, so the document states both extra refusals.

This file holds a verifier written from that statement (RFC 8032 section 6's reference code,
transcribed, plus the two refusals) and crafted signatures that show libsodium agrees with it
case by case, and that RFC 8032 alone does not. Everything is deterministic (fixed seeds and
scalars), so an outsider can reproduce every case from the document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import SigningKey, VerifyKey

from gibsey.ledger.entry import DOMAIN, SIG_LEN, parse, verify_signature
from gibsey.ledger.errors import Rejected, RejectReason
from tests.test_ledger_entry import pinned_entry

# ---- RFC 8032 section 6, transcribed (extended coordinates X, Y, Z, T: x=X/Z, y=Y/Z, xy=T/Z)

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the group order (RFC 8032: q is p here)
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]
NEUTRAL: Point = (0, 1, 1, 0)


def point_add(a: Point, b: Point) -> Point:
    ea, eb = (a[1] - a[0]) * (b[1] - b[0]) % P, (a[1] + a[0]) * (b[1] + b[0]) % P
    ec, ed = 2 * a[3] * b[3] * D % P, 2 * a[2] * b[2] % P
    e, f, g, h = eb - ea, ed - ec, ed + ec, eb + ea
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_mul(s: int, point: Point) -> Point:
    result = NEUTRAL
    while s > 0:
        if s & 1:
            result = point_add(result, point)
        point = point_add(point, point)
        s >>= 1
    return result


def point_equal(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def recover_x(y: int, sign: int) -> int | None:
    """RFC 8032 5.1.3: refuses y >= p, and x = 0 with the sign bit set."""
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def point_decompress(s: bytes) -> Point | None:
    y = int.from_bytes(s, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def point_compress(point: Point) -> bytes:
    zinv = pow(point[2], -1, P)
    x, y = point[0] * zinv % P, point[1] * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def sha512_modq(data: bytes) -> int:
    return int.from_bytes(hashlib.sha512(data).digest(), "little") % L


_GY = 4 * pow(5, -1, P) % P
_GX = recover_x(_GY, 0)
assert _GX is not None
BASE: Point = (_GX, _GY, 1, _GX * _GY % P)


def rfc8032_verify(public: bytes, msg: bytes, signature: bytes) -> bool:
    """RFC 8032 section 6 `verify`: canonical A and R, S < L, [S]B = R + [k]A."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = point_decompress(public)
    r = point_decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = sha512_modq(signature[:32] + public + msg)
    return point_equal(point_mul(s, BASE), point_add(r, point_mul(k, a)))


# ---- What the document states on top of RFC 8032


def is_small_order(point: Point) -> bool:
    """[8]P is the neutral element (P is one of the 8 points of order 1, 2, 4 or 8)."""
    return point_equal(point_mul(8, point), NEUTRAL)


def documented_verify(public: bytes, msg: bytes, signature: bytes) -> bool:
    """RFC 8032 verification, refusing also a small-order A and a small-order R."""
    if not rfc8032_verify(public, msg, signature):
        return False
    a = point_decompress(public)
    r = point_decompress(signature[:32])
    assert a is not None and r is not None  # rfc8032_verify decoded both
    return not is_small_order(a) and not is_small_order(r)


def libsodium_verify(public: bytes, msg: bytes, signature: bytes) -> bool:
    """PyNaCl as the ledger calls it. For a 32-byte key and a 64-byte signature every refusal
    is BadSignatureError (VerifyKey() checks only the length); anything else fails the test."""
    try:
        VerifyKey(public).verify(msg, signature)
    except BadSignatureError:
        return False
    return True


# ---- Crafted cases

SEED = bytes(range(32))
MSG = b"gibsey signature rules"
KEY = SigningKey(SEED)
PUBLIC = bytes(KEY.verify_key)


def secret_scalar(seed: bytes) -> int:
    """RFC 8032 5.1.5: the first half of SHA-512(seed), clamped."""
    a = int.from_bytes(hashlib.sha512(seed).digest()[:32], "little")
    return (a & ((1 << 254) - 8)) | (1 << 254)


def scalar(n: int) -> bytes:
    return n.to_bytes(32, "little")


NEUTRAL_ENC = point_compress(NEUTRAL)  # 01 00..00
# The 8 small-order points, by their canonical encodings, with their orders.
SMALL_ORDER = {
    "0100000000000000000000000000000000000000000000000000000000000000": 1,
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f": 2,
    "0000000000000000000000000000000000000000000000000000000000000000": 4,
    "0000000000000000000000000000000000000000000000000000000000000080": 4,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05": 8,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85": 8,
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a": 8,
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa": 8,
}
ORDER_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def decoded(encoding: bytes) -> Point:
    point = point_decompress(encoding)
    assert point is not None
    return point


def forge_neutral_r(public: bytes, secret: int, r_enc: bytes, msg: bytes) -> bytes:
    """R (given as bytes) taken as the neutral element, S = k*a: [S]B = R + [k]A holds."""
    return r_enc + scalar(sha512_modq(r_enc + public + msg) * secret % L)


def case_real() -> tuple[bytes, bytes, bytes]:
    return PUBLIC, MSG, KEY.sign(MSG).signature


def case_neutral_key_zero() -> tuple[bytes, bytes, bytes]:
    return NEUTRAL_ENC, MSG, NEUTRAL_ENC + scalar(0)


def case_neutral_key_any() -> tuple[bytes, bytes, bytes]:
    s = 0x5EED
    return NEUTRAL_ENC, MSG, point_compress(point_mul(s, BASE)) + scalar(s)


def case_neutral_r() -> tuple[bytes, bytes, bytes]:
    return PUBLIC, MSG, forge_neutral_r(PUBLIC, secret_scalar(SEED), NEUTRAL_ENC, MSG)


def case_s_plus_l() -> tuple[bytes, bytes, bytes]:
    signature = KEY.sign(MSG).signature
    s = int.from_bytes(signature[32:], "little") + L
    assert s < 2**256 and signature[63] & 0xF0 == 0 and scalar(s)[31] & 0xF0 != 0
    return PUBLIC, MSG, signature[:32] + scalar(s)


def case_noncanonical_key() -> tuple[bytes, bytes, bytes]:
    # y = p + 1 is y = 1 (the neutral element) spelled non-canonically: a decoder that
    # reduced y mod p would accept R = neutral, S = 0, as in case b.
    return scalar(P + 1), MSG, NEUTRAL_ENC + scalar(0)


def case_noncanonical_r() -> tuple[bytes, bytes, bytes]:
    return PUBLIC, MSG, forge_neutral_r(PUBLIC, secret_scalar(SEED), scalar(P + 1), MSG)


def case_mixed_r_cofactored() -> tuple[bytes, bytes, bytes]:
    """R = [r]B + T (T of order 8), S = r + k*a: only [8][S]B = [8]R + [8][k]A holds."""
    r = 99
    r_enc = point_compress(point_add(point_mul(r, BASE), decoded(ORDER_8)))
    k = sha512_modq(r_enc + PUBLIC + MSG)
    return PUBLIC, MSG, r_enc + scalar((r + k * secret_scalar(SEED)) % L)


def case_mixed_key() -> tuple[bytes, bytes, bytes]:
    """A = [a]B + T (T of order 8: A is not small order, nor in the prime-order subgroup),
    signed honestly with a message whose k is a multiple of 8, so [k]T is neutral."""
    secret = secret_scalar(SEED)
    public = point_compress(point_add(point_mul(secret, BASE), decoded(ORDER_8)))
    r = 4242
    r_enc = point_compress(point_mul(r, BASE))
    msg = next(
        m for m in (b"%d" % i for i in range(256)) if sha512_modq(r_enc + public + m) % 8 == 0
    )
    return public, msg, r_enc + scalar((r + sha512_modq(r_enc + public + msg) * secret) % L)


Builder = Callable[[], tuple[bytes, bytes, bytes]]
# name: (builder, RFC 8032 accepts, documented accepts, libsodium accepts)
CASES: dict[str, tuple[Builder, bool, bool, bool]] = {
    "a-real-signature": (case_real, True, True, True),
    "b-neutral-key-R-neutral-S-0": (case_neutral_key_zero, True, False, False),
    "c-neutral-key-R-sB-S-s": (case_neutral_key_any, True, False, False),
    "d-real-key-R-neutral-S-ka": (case_neutral_r, True, False, False),
    "e-S-plus-L": (case_s_plus_l, False, False, False),
    "f-key-y-p-plus-1": (case_noncanonical_key, False, False, False),
    "f2-R-y-p-plus-1": (case_noncanonical_r, False, False, False),
    "h-mixed-order-R-cofactored-only": (case_mixed_r_cofactored, False, False, False),
    "i-mixed-order-key": (case_mixed_key, True, True, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_signature_rules(name: str) -> None:
    builder, rfc, documented, libsodium = CASES[name]
    public, msg, signature = builder()
    assert len(public) == 32 and len(signature) == 64
    assert rfc8032_verify(public, msg, signature) is rfc
    assert documented_verify(public, msg, signature) is documented
    assert libsodium_verify(public, msg, signature) is libsodium


@pytest.mark.parametrize("encoding", [e for e, order in SMALL_ORDER.items() if order > 1])
def test_g_small_order_key(encoding: str) -> None:
    """A key of order 2, 4 or 8 with R = [s]B, S = s, for a message whose k is a multiple of
    the key's order ([k]A neutral): RFC 8032 accepts; libsodium and the document refuse."""
    public = bytes.fromhex(encoding)
    order = SMALL_ORDER[encoding]
    s = 777
    r_enc = point_compress(point_mul(s, BASE))
    tries = (b"g-%d" % i for i in range(256))
    msg = next(m for m in tries if sha512_modq(r_enc + public + m) % order == 0)
    signature = r_enc + scalar(s)
    assert rfc8032_verify(public, msg, signature) is True
    assert documented_verify(public, msg, signature) is False
    assert libsodium_verify(public, msg, signature) is False


def test_the_eight_small_order_points() -> None:
    """The listed encodings are canonical, distinct, of the stated orders, and all there is."""
    for encoding, order in SMALL_ORDER.items():
        point = decoded(bytes.fromhex(encoding))
        assert point_compress(point) == bytes.fromhex(encoding)
        assert is_small_order(point)
        assert min(n for n in (1, 2, 4, 8) if point_equal(point_mul(n, point), NEUTRAL)) == order
    assert len(SMALL_ORDER) == 8  # the torsion subgroup of edwards25519 has 8 elements
    assert not is_small_order(BASE) and not is_small_order(decoded(PUBLIC))


def test_wrong_lengths_raise_value_error_not_bad_signature() -> None:
    """Only lengths make PyNaCl raise something else: nacl.exceptions.ValueError (a builtin
    ValueError, not a BadSignatureError). The ledger never gets there (the author is 32 bytes
    by parsing, the signature the last 64), yet catches both."""
    signature = KEY.sign(MSG).signature
    with pytest.raises(NaclValueError):
        VerifyKey(PUBLIC[:31])
    with pytest.raises(NaclValueError):
        VerifyKey(PUBLIC).verify(MSG, signature[:63])
    assert not issubclass(NaclValueError, BadSignatureError)
    assert issubclass(NaclValueError, ValueError)


def test_ledger_check_is_the_documented_rule() -> None:
    """The ledger's own check, over DOMAIN || payload of a real entry: the genuine signature
    (case a) passes; R = neutral, S = k*a (case d), which RFC 8032 alone accepts, is refused."""
    entry = pinned_entry()  # (signed with SigningKey(SEED): this file's KEY)
    signed = DOMAIN + entry.payload
    forged_sig = forge_neutral_r(PUBLIC, secret_scalar(SEED), NEUTRAL_ENC, signed)
    assert len(forged_sig) == SIG_LEN
    assert documented_verify(PUBLIC, signed, entry.signature) is True
    assert verify_signature(parse(entry.raw)) is True
    assert rfc8032_verify(PUBLIC, signed, forged_sig) is True
    assert documented_verify(PUBLIC, signed, forged_sig) is False
    forged_raw = entry.payload + forged_sig
    assert verify_signature(parse(forged_raw, verify=False)) is False
    with pytest.raises(Rejected) as refused:
        parse(forged_raw)
    assert refused.value.reason is RejectReason.BAD_SIGNATURE
