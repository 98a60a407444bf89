"""Glyph rotation -> ritual: the handler that answers every `glyph/rotated` on this node.

A rotation names one QDPI state (`state = symbol * 4 + rotation`). The ritual runs whatever
program the runtime has bound to that state and records what ran as one `ritual/performed`
event. Until the Zig VM runtime is wired in (issue 3) the bound program is empty, and the ritual
only records the state it was asked to perform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gibsey.node.envelope import Event, GlyphRotated, Payload, RitualPerformed


class Emitter(Protocol):
    def __call__(self, kind: str, payload: Payload, actor: str = ...) -> Event: ...


ProgramRunner = Callable[[Event, GlyphRotated], tuple[str, int]]


def no_program(event: Event, rotated: GlyphRotated) -> tuple[str, int]:
    return "", 0


class RitualHandler:
    def __init__(self, emit: Emitter, runner: ProgramRunner = no_program) -> None:
        self._emit = emit
        self.runner = runner

    def __call__(self, event: Event, payload: Payload) -> None:
        assert isinstance(payload, GlyphRotated)
        program, effects = self.runner(event, payload)
        self._emit(
            "ritual/performed",
            RitualPerformed(
                symbol=payload.symbol,
                rotation=payload.rotation,
                state=payload.symbol * 4 + payload.rotation,
                cause=event.id,
                program=program,
                effects=effects,
            ),
            actor=event.actor,
        )
