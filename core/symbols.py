"""The QDPI-256 symbol space: 64 base symbols x 4 rotations, one byte per state.

The first 16 base symbols are the characters of the corpus, in corpus order (each is a persona);
the other 48 are hidden symbols. `state = symbol * 4 + rotation`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gibsey.dialcore.qdpi import CHARACTERS as _CHARACTERS
from gibsey.dialcore.qdpi import ROTATIONS as _ROTATIONS

ROTATIONS: tuple[str, ...] = _ROTATIONS
BASE_SYMBOLS = 64


@dataclass(frozen=True)
class Symbol:
    id: int
    slug: str
    colour: str

    @property
    def is_character(self) -> bool:
        return self.id < len(CHARACTERS)


# One table for the dial and the node: the firmware's own module (MicroPython-compatible, shared
# as gibsey.dialcore) holds the 16 character symbols in corpus order, (slug, colour).
CHARACTERS: tuple[tuple[str, str], ...] = _CHARACTERS

SYMBOLS: tuple[Symbol, ...] = tuple(
    Symbol(i, *CHARACTERS[i]) if i < len(CHARACTERS) else Symbol(i, f"hidden-{i:02d}", "#404040")
    for i in range(BASE_SYMBOLS)
)
BY_SLUG = {s.slug: s for s in SYMBOLS}


def state_of(symbol: int, rotation: int) -> int:
    assert 0 <= symbol < BASE_SYMBOLS and 0 <= rotation < len(ROTATIONS)
    return symbol * len(ROTATIONS) + rotation


def split_state(state: int) -> tuple[int, int]:
    assert 0 <= state < BASE_SYMBOLS * len(ROTATIONS)
    return divmod(state, len(ROTATIONS))


def state_key(state: int) -> str:
    """The opcode table's key, `<symbol_id>:<rotation>`."""
    symbol, rotation = split_state(state)
    return f"{symbol}:{rotation}"
