"""Who acts: the one rule for an actor's name, on every event and every ledger entry.

An event's `actor` is who turned the dial or asked (a visitor, a kiosk, `dial`, `node`); a
turn's mint goes to that actor on the ledger, whose entries name actors by this same rule
(ledger/CANONICAL.md). One rule for both, so an event the node takes in never names someone the
ledger cannot pay: before, a turn from "Ada Lovelace" ran its ritual and its mint was refused.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

# \Z, not $: Python's `$` also matches before a final newline, which took "london-fox\n" for an
# actor (a rule no reader of CANONICAL.md could know).
ACTOR_RE = re.compile(r"^[a-z0-9][a-z0-9:._-]{0,63}\Z")
# The same rule for JSON Schema and pydantic's Rust regex, where `$` is the end of the text only
# (tests/test_actors.py holds the two to the same answers).
ACTOR_PATTERN = r"^[a-z0-9][a-z0-9:._-]{0,63}$"
ACTOR_RULE = "1 to 64 of a-z 0-9 : . _ -, the first a letter or digit"

Actor = Annotated[
    str,
    Field(
        pattern=ACTOR_PATTERN,
        description=f"who acts: {ACTOR_RULE} (e.g. visitor, visitor:0042, london-fox)",
    ),
]
