"""The QDPI-256 symbol space: 64 base symbols x 4 rotations, one byte per state.

The first 16 base symbols are the characters of the corpus, in corpus order (each is a persona);
the other 48 are hidden symbols. `state = symbol * 4 + rotation`.
"""

from __future__ import annotations

from dataclasses import dataclass

ROTATIONS = ("read", "write", "remember", "dream")
BASE_SYMBOLS = 64


@dataclass(frozen=True)
class Symbol:
    id: int
    slug: str
    colour: str

    @property
    def is_character(self) -> bool:
        return self.id < len(CHARACTERS)


CHARACTERS: tuple[tuple[str, str], ...] = (
    ("an-author", "#34FF78"),
    ("london-fox", "#FF3B3B"),
    ("glyph-marrow", "#00A2FF"),
    ("phillip-bafflemint", "#FFFF33"),
    ("jacklyn-variance", "#FF00FF"),
    ("oren-progresso", "#00FFAA"),
    ("old-natalie", "#7A3CFF"),
    ("princhetta", "#AAAAAA"),
    ("cop-e-right", "#FFFFFF"),
    ("new-natalie", "#CC66FF"),
    ("arieol-owlist", "#99CCFF"),
    ("jack-parlance", "#FF3385"),
    ("manny-valentinas", "#FFB000"),
    ("shamrock-stillman", "#00FFFF"),
    ("todd-fishbone", "#FF7744"),
    ("the-author", "#BFFF00"),
)

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
