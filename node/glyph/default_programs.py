"""The program every QDPI state runs until an artist binds another one.

One template per rotation, filled in per symbol, assembled by the same assembler artists use:
- Read     (public to public):   the visitor is minted a token for the ritual; the glyph chimes.
- Write    (private to private): the visitor is minted a token for the act and gifts it to the
                                 symbol's keeper (so a first-time visitor can always cover it).
- Remember (private to public):  a token for the visitor, and a narrative branch named for the
                                 symbol is proposed, so the memory can become canon.
- Dream    (generation):         the symbol's persona is asked to dream (hidden symbols dream
                                 through the-author), and a dream branch is proposed.
Actor ids 0..63 are the keepers of the 64 base symbols (the runtime maps them to names).
"""

from __future__ import annotations

from gibsey.core.symbols import ROTATIONS, SYMBOLS, Symbol
from gibsey.node.glyph.vm.asm import assemble

THE_AUTHOR = 15

TEMPLATES = {
    "read": """\
; Read {slug}: mint a token to the visitor, chime the glyph.
    LDT actor
    PUSH 1
    MINT
    LDT state
    EMIT "glyph/read"
    HALT
""",
    "write": """\
; Write {slug}: a token minted to the visitor for the act, gifted on to the keeper of {slug}.
    LDT actor
    PUSH 1
    MINT
    LDT actor
    PUSH {symbol}
    PUSH 1
    GIFT
    LDT state
    EMIT "glyph/write"
    HALT
""",
    "remember": """\
; Remember {slug}: a token for the visitor; propose the memory as a branch of the story.
    LDT actor
    PUSH 1
    MINT
    PROPOSE "remember-{slug}"
    LDT state
    EMIT "glyph/remember"
    HALT
""",
    "dream": """\
; Dream {slug}: ask {persona} to dream from here, and propose the dream as a branch.
    PUSH {persona_id}
    ASK "Dream the next page of {slug} from where the dial stopped."
    PROPOSE "dream-{slug}"
    LDT state
    EMIT "glyph/dream"
    HALT
""",
}


def default_source(symbol: Symbol, rotation: int) -> str:
    persona_id = symbol.id if symbol.is_character else THE_AUTHOR
    return TEMPLATES[ROTATIONS[rotation]].format(
        slug=symbol.slug,
        symbol=symbol.id,
        persona_id=persona_id,
        persona=SYMBOLS[persona_id].slug,
    )


def default_programs() -> dict[int, tuple[str, bytes]]:
    """state -> (source, bytecode) for all 256 states."""
    out: dict[int, tuple[str, bytes]] = {}
    for symbol in SYMBOLS:
        for rotation in range(len(ROTATIONS)):
            source = default_source(symbol, rotation)
            name = f"default-{symbol.id}-{ROTATIONS[rotation]}.gasm"
            out[symbol.id * len(ROTATIONS) + rotation] = (source, assemble(source, filename=name))
    return out
