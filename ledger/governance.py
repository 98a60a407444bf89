"""Schrödinger Hearings: proposals, weighted votes, and running what passed exactly once here.

The rule (GOVERNANCE.md): a proposal's voters and weights are frozen at its snapshot point -
the balances just before it in fold order - and each actor's weight is the integer square root
of its snapshot balance. A hearing needs two majorities: it passes at the vote that makes its
yes-weight more than half the total snapshot weight *and* its yes-votes come through more than
half of the gallery's member nodes (a vote's node is the author of the vote entry; the gallery
is recorded on the ledger, membership.py); it is rejected likewise by no-weight of at least half
and no-votes through more than half of the nodes; it expires when the fold reaches an entry
whose Lamport clock is past `lamport + VOTE_WINDOW`. No wall clock is ever read: two nodes
holding the same feeds decide the same way.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nacl.signing import SigningKey

from .economy import OK, Economy, EntryEffect
from .entry import Entry
from .membership import hearing_nodes
from .store import Store

log = logging.getLogger(__name__)

VOTE_WINDOW = 1024  # Lamport ticks a hearing stays open


class ProposalStatus(StrEnum):
    OPEN = "open"
    PASSED = "passed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    VOID = "void"  # nobody held tokens at the snapshot, or a node outside the gallery proposed


def weight(balance: int) -> int:
    """Voting weight of a snapshot balance: isqrt damps the richest actors' say."""
    return math.isqrt(balance) if balance > 0 else 0


def void_reason(economy: Economy, members: frozenset[bytes], node: bytes) -> str | None:
    """Why a proposal through `node` at this point of the fold would be void (None: it would
    not). The fold and a node about to propose (`Ledger.propose`) both ask this."""
    if members and node not in members:
        return f"void: node {node.hex()[:12]} is not a member of the gallery"
    if not any(weight(b) for b in economy.balances.values()):
        return "void: no actor held tokens at the snapshot"
    return None


@dataclass
class Proposal:
    hash: bytes
    author: bytes
    lamport: int
    action: str
    target: str
    title: str
    proposer: str
    weights: dict[str, int]
    total: int
    nodes: frozenset[bytes] = frozenset()  # the member nodes whose say the hearing needs
    yes: int = 0
    no: int = 0
    votes: dict[str, str] = field(default_factory=dict)
    yes_nodes: set[bytes] = field(default_factory=set)
    no_nodes: set[bytes] = field(default_factory=set)
    status: ProposalStatus = ProposalStatus.OPEN
    decided_by: bytes | None = None  # hash of the vote that decided it

    @property
    def deadline(self) -> int:
        return self.lamport + VOTE_WINDOW

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()


@dataclass
class Governance:
    members: frozenset[bytes] = frozenset()  # the gallery, from every feed's latest list
    proposals: dict[bytes, Proposal] = field(default_factory=dict)
    _open: dict[bytes, Proposal] = field(default_factory=dict)

    def tick(self, lamport: int) -> None:
        """Expire open hearings whose window the fold has passed (called before each entry)."""
        if not self._open:
            return
        for h, p in list(self._open.items()):
            if lamport > p.deadline:
                p.status = ProposalStatus.EXPIRED
                del self._open[h]

    def apply(self, e: Entry, economy: Economy) -> EntryEffect | None:
        if e.type == "proposal":
            return self._propose(e, economy)
        if e.type == "vote":
            return self._vote(e)
        return None

    def _propose(self, e: Entry, economy: Economy) -> EntryEffect:
        weights = {a: w for a, b in economy.balances.items() if (w := weight(b)) > 0}
        b = e.body
        p = Proposal(
            e.hash,
            e.author,
            e.lamport,
            b["action"],
            b["target"],
            b["title"],
            b["proposer"],
            weights,
            sum(weights.values()),
            hearing_nodes(self.members, e.author),
        )
        self.proposals[e.hash] = p
        void = void_reason(economy, self.members, e.author)
        if void is not None:
            p.status = ProposalStatus.VOID
            return EntryEffect(True, void)
        self._open[e.hash] = p
        return OK

    def _vote(self, e: Entry) -> EntryEffect:
        actor, choice = e.body["actor"], e.body["choice"]
        p = self.proposals.get(bytes.fromhex(e.body["proposal"]))
        if p is None:
            return EntryEffect(
                False, "unknown proposal (not held, or after this vote in fold order)"
            )
        if p.status is not ProposalStatus.OPEN:
            return EntryEffect(False, f"hearing already {p.status.value}")
        if e.author not in p.nodes:
            return EntryEffect(False, f"node {e.author_hex[:12]} has no say: not a member")
        if actor in p.votes:
            return EntryEffect(False, f"{actor} already voted {p.votes[actor]}")
        w = p.weights.get(actor, 0)
        if w == 0:
            return EntryEffect(False, f"{actor} held no tokens at the snapshot")
        p.votes[actor] = choice
        if choice == "yes":
            p.yes += w
            p.yes_nodes.add(e.author)
        else:
            p.no += w
            p.no_nodes.add(e.author)
        n = len(p.nodes)
        if 2 * p.yes > p.total and 2 * len(p.yes_nodes) > n:
            p.status, p.decided_by = ProposalStatus.PASSED, e.hash
        elif 2 * p.no >= p.total and 2 * len(p.no_nodes) > n:
            p.status, p.decided_by = ProposalStatus.REJECTED, e.hash
        said = f"weight {w}; nodes yes {len(p.yes_nodes)}, no {len(p.no_nodes)} of {n}"
        if p.status is not ProposalStatus.OPEN:
            del self._open[p.hash]
            return EntryEffect(True, f"{said}; decided: {p.status.value}")
        return EntryEffect(True, said)


# ---- executors: what a passed proposal does on this node ---------------------------------------

Executor = Callable[[Proposal], str]  # returns a short description of what it did

_EXEC_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    proposal BLOB PRIMARY KEY,
    action   TEXT NOT NULL,
    status   TEXT NOT NULL,   -- running | executed | failed | interrupted
    detail   TEXT NOT NULL DEFAULT '',
    outcome  BLOB              -- hash of the outcome entry in our own feed
)
"""


class Executors:
    """Which function applies which action kind on this node (opcode table, story, config)."""

    def __init__(self) -> None:
        self._by_action: dict[str, Executor] = {}

    def register(self, action: str, fn: Executor) -> None:
        self._by_action[action] = fn

    def get(self, action: str) -> Executor | None:
        return self._by_action.get(action)


@dataclass(frozen=True)
class Execution:
    proposal: str
    action: str
    status: str
    detail: str


def ensure_schema(store: Store) -> None:
    # Looked up first: a write transaction waits for the write lock, which a running node's
    # ledger batch holds for up to [node] ledger_commit_every_s, and `gibsey ledger balance`
    # beside it should not wait that long to read.
    with store.lock:
        made = store.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'executions'"
        ).fetchone()
    if made is None:
        with store.transaction() as db:
            db.execute(_EXEC_SCHEMA)


def executions(store: Store) -> dict[bytes, Execution]:
    ensure_schema(store)
    with store.lock:
        rows = store.db.execute("SELECT proposal, action, status, detail FROM executions")
        return {p: Execution(p.hex(), a, s, d) for p, a, s, d in rows}


def run_passed(
    store: Store, key: SigningKey, passed: list[Proposal], executors: Executors
) -> list[Execution]:
    """Run the executor of each passed proposal that has not run on this node yet.

    Exactly-once across restarts: the proposal is first claimed in `executions` (committed,
    status "running"), then its executor runs, then the outcome entry and status are written in
    one transaction. A crash while running leaves "running": the next call does *not* re-run
    it (re-running an opcode-table change is worse than not finishing it) but records the
    outcome "interrupted", so a person can look. Proposals whose action has no executor wait.
    """
    ensure_schema(store)
    done: list[Execution] = []
    for p in passed:
        fn = executors.get(p.action)
        with store.transaction() as db:
            row = db.execute(
                "SELECT status FROM executions WHERE proposal = ?", (p.hash,)
            ).fetchone()
            if row is None and fn is not None:
                db.execute(
                    "INSERT INTO executions (proposal, action, status) VALUES (?,?,'running')",
                    (p.hash, p.action),
                )
        if row is None:
            if fn is None:
                continue
            try:
                status, detail = "executed", fn(p)
            except Exception as exc:  # an executor's failure is an outcome, not a crash
                log.exception("executor for %s failed", p.action)
                status, detail = "failed", f"{type(exc).__name__}: {exc}"
        elif row[0] == "running":
            status, detail = "interrupted", "the node stopped while this executor was running"
        else:
            continue
        detail = detail[:1000]
        body: dict[str, Any] = {
            "proposal": p.hash_hex,
            "action": p.action,
            "status": status,
            "detail": detail,
        }

        def mark(
            db: sqlite3.Connection,
            e: Entry,
            status: str = status,
            detail: str = detail,
            h: bytes = p.hash,
        ) -> None:
            db.execute(
                "UPDATE executions SET status = ?, detail = ?, outcome = ? WHERE proposal = ?",
                (status, detail, e.hash, h),
            )

        store.append(key, "outcome", body, also=mark)
        done.append(Execution(p.hash_hex, p.action, status, detail))
    return done
