"""The operator gate's memory of the last signed change it accepted (DATA/operator-lamport,
core/operator.py) when the disk damaged it. Tried (an outside tester's power-cut sweep): a
zeroed or garbled file was read as "no change ever accepted" (-1), so every earlier signed
change could be replayed; bytes that are not UTF-8 stopped the node with a traceback. Must hold:
the damage is said in one line, replays of what was accepted are still refused (the node's clock
ceiling, past every change it observed, stands in), and a change signed now is taken."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.core.lamport import LAMPORT_FILENAME, LamportClock
from gibsey.core.operator import STATE_FILENAME, OperatorGate, fresh_lamport, sign_change

KIND = "vm/load"
NODE = "node1"


def _offer(gate: OperatorGate, key: SigningKey, event_id: str, lamport: int) -> str | None:
    payload = sign_change(key, event_id, NODE, KIND, lamport, {"symbol": 1, "rotation": 0})
    operators = frozenset({bytes(key.verify_key).hex()})
    return gate.refusal(operators, event_id, NODE, KIND, lamport, payload)


@pytest.mark.parametrize("damage", [b"\x00\x00\x00\x00", b"\xff\xfe\x31", b"1x\n"])
def test_a_damaged_memory_still_refuses_replays_and_takes_a_fresh_change(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    key = SigningKey.generate()
    clock = LamportClock(tmp_path / LAMPORT_FILENAME, block=100)
    accepted = fresh_lamport(tmp_path)  # as `gibsey vm load --sign` picks it
    assert _offer(OperatorGate(tmp_path), key, "change-1", accepted) is None
    clock.observe(accepted)  # the router's clock sees every change before the gate does
    (tmp_path / STATE_FILENAME).write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="gibsey.core"):
        gate = OperatorGate(tmp_path)  # the next start
    assert caplog.text.count(f"{tmp_path / STATE_FILENAME} is damaged") == 1, caplog.text
    refused = _offer(gate, key, "change-1-again", accepted)
    assert refused is not None and refused.startswith("replayed or stale"), refused
    assert _offer(gate, key, "change-2", fresh_lamport(tmp_path)) is None
