"""Proof of an operator: changes that alter what a node does are signed, whatever the broker.

A `vm/load` (binding a program) or an `agent/reload` (a model swap) reaches the node over MQTT,
where any client of the broker may publish. The broker's ACLs (images/mosquitto) are one wall;
this is the one that holds with any broker, even the anonymous embedded one: such a change
carries `operator` (the hex ed25519 public key) and `signature` (hex) in its payload, over
`signed_bytes`: canonical JSON of the envelope's id, node, kind and lamport and the payload
without its signature. The node accepts it only when the key is one of its operators (`[node]
operators`, plus the node's own key, so the CLI on the node's data directory keeps working: whoever
can read node.key is the node already), the signature verifies, and it is fresh: its lamport
greater than that of the last operator change the node accepted (kept on disk, so a replay after
a restart is refused too) and its id not used before.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gibsey.core.identity import write_atomic
from gibsey.core.lamport import LAMPORT_FILENAME, DamagedNumber, read_ceiling, read_number

if TYPE_CHECKING:
    from gibsey.core.envelope import Event

STATE_FILENAME = "operator-lamport"
log = logging.getLogger("gibsey.core")
SIGNATURE_FIELD = "signature"
OPERATOR_FIELD = "operator"
_IDS_REMEMBERED = 4096


def canonical_json(value: Any) -> bytes:
    """The one byte string for a JSON value: sorted keys, no spaces, UTF-8 (no floats here)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def signed_bytes(
    event_id: str, node: str, kind: str, lamport: int, payload: dict[str, Any]
) -> bytes:
    """What an operator signs: the change, where it goes and when (its place on the clock)."""
    body = {k: v for k, v in payload.items() if k != SIGNATURE_FIELD}
    return canonical_json(
        {"id": event_id, "node": node, "kind": kind, "lamport": lamport, "payload": body}
    )


def sign_change(
    key: SigningKey, event_id: str, node: str, kind: str, lamport: int, payload: dict[str, Any]
) -> dict[str, Any]:
    """`payload` with `operator` and `signature` added (the signature covers `operator` too)."""
    body = {**payload, OPERATOR_FIELD: bytes(key.verify_key).hex()}
    body.pop(SIGNATURE_FIELD, None)
    signature = key.sign(signed_bytes(event_id, node, kind, lamport, body)).signature
    return {**body, SIGNATURE_FIELD: signature.hex()}


def _key_bytes(text: str) -> bytes | None:
    """The 32 bytes of an ed25519 key written as 64 hex digits, else None."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def read_operator_key(path: Path) -> SigningKey:
    """An operator's key file: the 32-byte seed (the format of node.key) or its 64 hex digits.
    ValueError saying what is wrong."""
    raw = path.read_bytes()
    data = raw if len(raw) == 32 else _key_bytes(raw.decode("ascii", "replace").strip())
    if data is None:
        raise ValueError(f"{path}: not an ed25519 key (32 bytes, or 64 hex digits)")
    return SigningKey(data)


def check_public_key(text: str) -> str:
    """`text` if it is a hex ed25519 public key, else ValueError."""
    raw = _key_bytes(text)
    if raw is None:
        raise ValueError(f"operator {text[:80]!r}: expected 64 hex digits (an ed25519 public key)")
    VerifyKey(raw)
    return text.lower()


class OperatorGate:
    """Decides whether a signed change is an operator's and fresh; remembers the last one."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / STATE_FILENAME
        self.last_lamport = _last_accepted(self._path, state_dir / LAMPORT_FILENAME)
        self._ids: collections.deque[str] = collections.deque(maxlen=_IDS_REMEMBERED)

    def refusal(
        self,
        operators: frozenset[str],
        event_id: str,
        node: str,
        kind: str,
        lamport: int,
        payload: dict[str, Any],
    ) -> str | None:
        """None when the change is accepted (and then remembered), else why it is refused."""
        key = payload.get(OPERATOR_FIELD)
        signature = payload.get(SIGNATURE_FIELD)
        if not isinstance(key, str) or not isinstance(signature, str):
            return "unsigned: an operator's key and signature are required"
        if key.lower() not in operators:
            return f"key {key[:64]} is not one of this node's operators"
        try:
            VerifyKey(bytes.fromhex(key)).verify(
                signed_bytes(event_id, node, kind, lamport, payload), bytes.fromhex(signature)
            )
        except (BadSignatureError, ValueError, TypeError):
            return "bad signature"
        if lamport <= self.last_lamport or event_id in self._ids:
            last = self.last_lamport
            return f"replayed or stale: lamport {lamport}, the last accepted was {last}"
        # Written before the change is made: a crash after it cannot let the change be replayed.
        write_atomic(self._path, f"{lamport}\n".encode(), mode=0o600)
        self.last_lamport = lamport
        self._ids.append(event_id)
        return None


def _last_accepted(path: Path, clock_path: Path) -> int:
    """The lamport of the last change accepted, kept in `path` (-1: none ever was). One the
    disk damaged is said, and the node's clock ceiling stands in for it: every change accepted
    was observed by that clock first, so its ceiling is past them all, and a replay of any of
    them is still refused (-1 would have let every one be replayed); a change signed now
    (`fresh_lamport`: past that ceiling) is taken."""
    try:
        last = read_number(path)
    except DamagedNumber as exc:
        floor = read_ceiling(clock_path)
        log.warning(
            "%s: signed changes at or before the node's clock ceiling (%d) are refused as replays",
            exc,
            floor,
        )
        return floor
    return -1 if last is None else last


_GATES: dict[Path, OperatorGate] = {}


def gate_for(data_dir: Path) -> OperatorGate:
    """The node's one gate (every kind of operator change shares one order of freshness)."""
    gate = _GATES.get(data_dir)
    if gate is None:
        gate = _GATES[data_dir] = OperatorGate(data_dir)
    return gate


def change_refusal(
    data_dir: Path, operators: Iterable[str], own_key: str, event: Event
) -> str | None:
    """Why this node refuses the change in `event` (None: an operator's, fresh, accepted)."""
    keys = frozenset(key.lower() for key in operators) | {own_key.lower()}
    return gate_for(data_dir).refusal(
        keys, event.id, event.node, event.kind, event.lamport, event.payload
    )


def fresh_lamport(data_dir: Path | None) -> int:
    """A lamport for a change signed now: past the node's clock (its reserved ceiling, in
    DATA/lamport, which only grows) when the command runs on the node's data directory, so it is
    greater than any change the node accepted before."""
    if data_dir is not None:
        ceiling = read_ceiling(data_dir / LAMPORT_FILENAME)
        if ceiling:
            return ceiling + 1
    return 1
