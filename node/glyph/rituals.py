"""Glyph rotation -> ritual: the handler that answers every `glyph/rotated` on this node.

A rotation names one QDPI state (`state = symbol * 4 + rotation`). The ritual runs whatever the
runtime has bound to that state (node/runtime.py: the Zig VM and the opcode table) and records
what ran as one `ritual/performed` event, after the program's own effects. A turn a gate
refuses (a flood) gets no `ritual/performed`: it is counted (`refused`, and by the gate that
refused it in the node's `throttled` drops), said once per interval in a `safety/alert`, and
costs nothing else, so a flood of refusals cannot become a flood of replies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from gibsey.core.envelope import (
    Event,
    GlyphRotated,
    Payload,
    RitualPerformed,
    payload_of,
    with_cause,
)

# Ritual records kept validated (RitualHandler): one per state and outcome seen, in practice.
MADE_RECORDS = 4096


class RitualOutcome(NamedTuple):  # immutable, and cheap to make on every rotation
    program: str  # short hash of the program that ran ("" when none is bound)
    effects: int
    fuel: int
    error: str


class Emitter(Protocol):
    """Node.send: puts an event on the spine (what it returns is not needed here)."""

    def __call__(self, kind: str, payload: Payload, actor: str = ...) -> object: ...


ProgramRunner = Callable[[Event, GlyphRotated], RitualOutcome]
# A gate may refuse a ritual before its program runs (the safety inverter throttling a flood of
# rotations): it returns the reason, or None to let it through.
RitualGate = Callable[[Event, GlyphRotated], str | None]


def no_program(event: Event, rotated: GlyphRotated) -> RitualOutcome:
    """Before the runtime attaches: the ritual only records the state it was asked for."""
    return RitualOutcome("", 0, 0, "")


class RitualHandler:
    """The ritual pipeline, built once with everything it asks (gibsey.node.parts.attach_rituals):
    each gate in order may refuse the turn; else the runner runs its program."""

    def __init__(
        self, emit: Emitter, runner: ProgramRunner = no_program, gates: Sequence[RitualGate] = ()
    ) -> None:
        self._emit = emit
        self.runner = runner
        self.gates: tuple[RitualGate, ...] = tuple(gates)
        self.performed = 0  # rituals recorded (a ritual/performed each)
        self.refused = 0  # turns a gate refused: no program, no reply
        self.last_refusal = ""
        # Told of each refused turn (the gateway answers a waiting request with it at once).
        self.refusal_listeners: list[Callable[[Event, str], None]] = []
        self._made: dict[tuple[int, int, RitualOutcome], Payload] = {}  # see __call__

    def __call__(self, event: Event, payload: Payload) -> None:
        assert isinstance(payload, GlyphRotated)
        for gate in self.gates:
            refusal = gate(event, payload)
            if refusal:
                self.refused += 1
                self.last_refusal = refusal
                for listener in tuple(self.refusal_listeners):
                    listener(event, refusal)
                return
        outcome = self.runner(event, payload)
        self.performed += 1
        # The record of a turn is the same but for its cause whenever the same state ran the
        # same program to the same outcome: validated once per distinct outcome, then only the
        # cause changes (with_cause).
        key = (payload.symbol, payload.rotation, outcome)
        made = self._made.get(key)
        if made is None:
            made = self._record(key, outcome)
        self._emit("ritual/performed", with_cause(made, "cause", event.id), event.actor)

    def _record(self, key: tuple[int, int, RitualOutcome], outcome: RitualOutcome) -> Payload:
        symbol, rotation, _ = key
        made = payload_of(
            RitualPerformed,
            {
                "symbol": symbol,
                "rotation": rotation,
                "state": symbol * 4 + rotation,
                "cause": "",
                "program": outcome.program,
                "effects": outcome.effects,
                "fuel": outcome.fuel,
                "error": outcome.error[:256],
            },
        )
        if len(self._made) >= MADE_RECORDS:  # outcomes that vary turn by turn: start afresh
            self._made.clear()
        self._made[key] = made
        return made
