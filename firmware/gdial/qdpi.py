"""Detents -> QDPI states.

QDPI-256: 64 base symbols x 4 rotations, `state = symbol * 4 + rotation` (one byte). Turning the
glyph steps through its four rotations, Read -> Write -> Remember -> Dream -> Read (clockwise;
counter-clockwise goes back). The base symbol is fixed per dial in its config file, or cycled by
a long press through the config's `symbols` list. With `carry` set, turning past Dream moves on
to Read of the next symbol of that list (a dial that walks all its states).
"""

ROTATIONS = ("read", "write", "remember", "dream")

# The 16 character symbols, in corpus order: (slug, colour). Symbols 16..63 are hidden.
CHARACTERS = (
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


def symbol_name(symbol: int) -> str:
    if 0 <= symbol < len(CHARACTERS):
        return CHARACTERS[symbol][0]
    return "hidden-" + str(symbol)


def state_of(symbol: int, rotation: int) -> int:
    return symbol * 4 + rotation


class QdpiDial:
    def __init__(
        self, symbol: int = 0, symbols: list[int] | None = None, carry: bool = False
    ) -> None:
        if symbols is None or len(symbols) == 0:
            symbols = [symbol]
        for s in symbols:
            if not 0 <= s <= 63:
                raise ValueError("symbols must be 0..63")
        if not 0 <= symbol <= 63:
            raise ValueError("symbol must be 0..63")
        self.symbols = list(symbols)
        if symbol not in self.symbols:
            self.symbols.insert(0, symbol)
        self.symbol = symbol
        self.rotation = 0
        self.carry = carry
        self.position = 0  # net detents turned

    @property
    def state(self) -> int:
        return self.symbol * 4 + self.rotation

    def _step_symbol(self, d: int) -> None:
        i = self.symbols.index(self.symbol)
        self.symbol = self.symbols[(i + d) % len(self.symbols)]

    def turn(self, detents: int) -> bool:
        """Apply a signed number of detents; True if the state changed."""
        if detents == 0:
            return False
        before = self.state
        self.position += detents
        d = 1 if detents > 0 else -1
        for _ in range(abs(detents)):
            r = self.rotation + d
            if self.carry and (r > 3 or r < 0):
                self._step_symbol(d)
            self.rotation = r % 4
        return self.state != before

    def cycle(self, d: int = 1) -> bool:
        """Next (or previous) base symbol of the list, rotation back to Read (a long press)."""
        before = self.state
        self._step_symbol(1 if d >= 0 else -1)
        self.rotation = 0
        return self.state != before
