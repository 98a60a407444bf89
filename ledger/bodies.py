"""The known entry types and the exact shape of each one's body.

Bodies are checked strictly both when we append and when we import: every field listed, no
field unlisted, each of the listed type. A node running this version never produces anything
else, so a body that does not fit is either a bug or forged; a later format bumps the entry's
`v` rather than loosening these shapes. Rules about *value* (can the giver cover the gift? is
the proposal still open?) are not checked here: they depend on the view, and an entry that
breaks them is kept in the log with no effect (see economy.py, governance.py).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gibsey.core.actors import ACTOR_RE

# Actors are people and personas at a dial: "london-fox", "visitor:0042", "node:n01ab23cd"; the
# rule is the events' too (core/actors.py).
HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
# A single ritual mints at most this much; bigger mints are forged or buggy.
MINT_MAX = 1000

ACTIONS = ("narrative-merge", "opcode-table-change", "config-change")
CHOICES = ("yes", "no")
OUTCOME_STATUSES = ("executed", "failed", "interrupted")
# Narrative engine (node/story/STORY.md): branch names, and the largest chunk of a story object.
BRANCH_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,63}\Z")
STORY_CHUNK_CHARS = 3700
STORY_MAX_PARTS = 4096
# A node's recorded mesh allow-list (ledger/membership.py): 60 keys fit in a 4096-byte body.
MEMBERS_MAX = 60


class BodyError(ValueError):
    """The body does not have its type's shape; the message names the field."""


def _actor(v: Any) -> bool:
    return type(v) is str and ACTOR_RE.match(v) is not None


def _positive(v: Any) -> bool:
    return type(v) is int and v > 0


def _non_negative(v: Any) -> bool:
    return type(v) is int and v >= 0


def _mint_amount(v: Any) -> bool:
    return type(v) is int and 0 < v <= MINT_MAX


def _hash(v: Any) -> bool:
    return type(v) is str and HASH_RE.match(v) is not None


def _node_keys(v: Any) -> bool:
    """1..MEMBERS_MAX ed25519 public keys (64 lowercase hex), strictly ascending: one spelling
    of one set, so two nodes recording the same list sign the same body."""
    return (
        type(v) is list
        and 0 < len(v) <= MEMBERS_MAX
        and all(_hash(k) for k in v)
        and all(a < b for a, b in itertools.pairwise(v))
    )


def _branch(v: Any) -> bool:
    return type(v) is str and BRANCH_RE.match(v) is not None


def _part(v: Any) -> bool:
    return type(v) is int and 0 <= v < STORY_MAX_PARTS


def _parts(v: Any) -> bool:
    return type(v) is int and 0 < v <= STORY_MAX_PARTS


def _text(limit: int) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return type(v) is str and len(v) <= limit

    return ok


def _one_of(options: tuple[str, ...]) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return type(v) is str and v in options

    return ok


@dataclass(frozen=True)
class Shape:
    required: Mapping[str, Callable[[Any], bool]]
    optional: Mapping[str, Callable[[Any], bool]]
    describe: str


SHAPES: dict[str, Shape] = {
    # A ritual performed at a dial mints tokens to the actor who performed it.
    "mint": Shape(
        {"actor": _actor, "amount": _mint_amount, "ritual": _text(64)},
        {},
        f"actor, amount 1..{MINT_MAX}, ritual",
    ),
    "gift": Shape(
        {"from": _actor, "to": _actor, "amount": _positive},
        {"memo": _text(280)},
        "from, to (actors), amount > 0, optional memo",
    ),
    "burn": Shape(
        {"actor": _actor, "amount": _positive},
        {"reason": _text(280)},
        "actor, amount > 0, optional reason",
    ),
    "proposal": Shape(
        {
            "action": _one_of(ACTIONS),
            "target": _hash,
            "title": _text(200),
            "proposer": _actor,
        },
        {},
        f"action in {ACTIONS}, target (sha256 hex of what it applies), title, proposer",
    ),
    "vote": Shape(
        {"proposal": _hash, "actor": _actor, "choice": _one_of(CHOICES)},
        {},
        "proposal (entry hash hex), actor, choice yes|no",
    ),
    # The node died and came back (node/rebirth.py): what is known of the death.
    "rebirth": Shape(
        {
            "node": _text(32),
            "uptime_ms": _non_negative,
            "cause": _text(96),
            "restarts": _non_negative,
        },
        {"pid": _non_negative, "exit_code": _text(32), "exit_status": _text(32)},
        "node, uptime_ms, cause, restarts (deaths in the crash-loop window), optional pid/exit",
    ),
    # The gallery's member nodes as this node's mesh allow-list names them (GOVERNANCE.md).
    "members": Shape(
        {"nodes": _node_keys},
        {},
        f"nodes: 1..{MEMBERS_MAX} ed25519 public keys (64 hex digits), ascending, no repeats",
    ),
    # What happened when this node ran a passed proposal's executor.
    "outcome": Shape(
        {
            "proposal": _hash,
            "action": _one_of(ACTIONS),
            "status": _one_of(OUTCOME_STATUSES),
            "detail": _text(1000),
        },
        {},
        "proposal, action, status, detail",
    ),
    # The narrative engine (node/story/STORY.md). A story object (a page version or a commit,
    # canonical JSON named by its SHA-256) travels as parts 0..parts-1 of its text.
    "story-object": Shape(
        {"hash": _hash, "part": _part, "parts": _parts, "data": _text(STORY_CHUNK_CHARS)},
        {},
        f"hash (sha256 hex of the whole object), part < parts <= {STORY_MAX_PARTS}, data",
    ),
    # A branch moves to a commit: created (no `old`, optional `from`) or advanced from `old`.
    "story-ref": Shape(
        {"branch": _branch, "commit": _hash, "actor": _actor},
        {"old": _hash, "from": _branch},
        "branch, commit (hash), actor, optional old (hash) or from (branch)",
    ),
}

KNOWN_TYPES = frozenset(SHAPES)


def validate(type_: str, body: Mapping[str, Any]) -> None:
    """Raise BodyError unless `body` has exactly the shape of `type_` (which must be known)."""
    shape = SHAPES[type_]
    if type(body) is not dict:
        raise BodyError("body must be an object")
    for key, ok in shape.required.items():
        if key not in body:
            raise BodyError(f"{type_}: missing field {key!r} (expects {shape.describe})")
        if not ok(body[key]):
            raise BodyError(f"{type_}: bad value for {key!r}: {body[key]!r}")
    for key, value in body.items():
        if key in shape.required:
            continue
        ok_opt = shape.optional.get(key)
        if ok_opt is None:
            raise BodyError(f"{type_}: unexpected field {key!r} (expects {shape.describe})")
        if not ok_opt(value):
            raise BodyError(f"{type_}: bad value for {key!r}: {value!r}")
    if type_ == "gift" and body["from"] == body["to"]:
        raise BodyError("gift: from and to are the same actor")
    if type_ == "story-object" and body["part"] >= body["parts"]:
        raise BodyError(f"story-object: part {body['part']} of only {body['parts']}")
    if type_ == "story-ref" and "old" in body and "from" in body:
        raise BodyError("story-ref: a branch is either created (from) or moved (old), not both")
