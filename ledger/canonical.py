"""Canonical JSON: the one byte string a value is signed as (specified in CANONICAL.md).

A strict subset of RFC 8785 (JCS): objects with string keys sorted by code point, arrays,
strings, integers in the IEEE-754-safe range, true/false/null; no floats at all, no whitespace,
UTF-8, minimal escaping. Encoding goes through orjson with sorted keys, whose compact output is
exactly this form (a property test checks it against a from-the-spec reference encoder);
decoding parses and then re-encodes, and refuses input that is not byte-for-byte canonical, so
one value has exactly one accepted encoding (no duplicate keys, no `\\u0041` for `A`, no `-0`).

Why orjson and not the standard library's `json` (issue 19, `gibsey bench catchup`): every
entry a node imports is decoded here, and the re-encoding is most of a parse. On this 2-core
machine, for a 311-byte entry: `json` loads 2.3 us and dumps 3.4 us, orjson 0.66 and 0.28 us;
a whole `entry.parse` went from 16 to ~9 us. orjson ships wheels for the Pi's aarch64.
"""

from __future__ import annotations

from typing import Any

import orjson

# Integers outside +-(2^53-1) cannot round-trip through JavaScript or a double-based JSON
# parser, so a dashboard or a peer written in another language could silently change them.
MAX_SAFE_INT = 2**53 - 1
# Deep nesting only serves to exhaust a parser's stack.
MAX_DEPTH = 16

JSONValue = Any  # None | bool | int | str | list[JSONValue] | dict[str, JSONValue]


class CanonicalError(ValueError):
    """The value (or the bytes) is outside the canonical subset; the message says where."""


class NotCanonicalError(CanonicalError):
    """The bytes are a valid value, but not its one canonical encoding."""


def check(value: JSONValue, depth: int = 0, path: str = "$") -> None:
    """Raise CanonicalError unless `value` is in the canonical data model."""
    if depth > MAX_DEPTH:
        raise CanonicalError(f"{path}: nested deeper than {MAX_DEPTH}")
    kind = type(value)
    # Exact type checks: bool is an int subclass and IntEnum/str subclasses could print
    # differently, so only the plain built-in types are accepted.
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise CanonicalError(f"{path}: object key {key!r} is not a string")
            if type(item) in _CONTAINERS or type(item) not in _LEAVES:
                check(item, depth + 1, f"{path}.{key}")
            elif type(item) is int and not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                check(item, depth + 1, f"{path}.{key}")
        return
    if kind is list:
        for i, item in enumerate(value):
            check(item, depth + 1, f"{path}[{i}]")
        return
    if value is None or kind is bool or kind is str:
        return
    if kind is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise CanonicalError(f"{path}: integer {value} outside +-(2^53-1)")
        return
    if kind is float:
        raise CanonicalError(f"{path}: floats are not allowed (use integers, e.g. milli-units)")
    raise CanonicalError(f"{path}: {kind.__name__} is not a JSON type")


# Object members that are plain leaves are checked inline above (the hot path of every entry
# is one object of leaves); anything else goes through the full recursive check.
_CONTAINERS = (dict, list)
_LEAVES = (str, int, bool, type(None))

# Compact output, keys sorted by code point (orjson sorts by UTF-8 bytes: the same order for
# any string that is valid Unicode, the only strings it encodes).
_SORTED = orjson.OPT_SORT_KEYS


def encode(value: JSONValue) -> bytes:
    """The canonical bytes of `value` (checked first)."""
    check(value)
    return encode_checked(value)


def encode_checked(value: JSONValue) -> bytes:
    """Canonical bytes of a value already known to pass `check` (the hot path)."""
    try:
        return orjson.dumps(value, option=_SORTED)
    except orjson.JSONEncodeError as exc:  # a lone surrogate: not valid Unicode text
        raise CanonicalError(f"not encodable: {exc}") from exc


def decode(data: bytes) -> JSONValue:
    """Parse canonical bytes; raise CanonicalError for anything else."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8, NaN, lone surrogates
        raise CanonicalError(f"not JSON: {exc}") from exc
    check(value)  # floats (orjson also reads an integer beyond 64 bits as one), depth, range
    if encode_checked(value) != data:
        raise NotCanonicalError("valid JSON but not in canonical form")
    return value
