"""Hearings: snapshot weights, quorum by Lamport order, executors run exactly once per node."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.ledger.errors import LedgerError, VoidHearing
from gibsey.ledger.governance import VOTE_WINDOW, Executors, Proposal, ProposalStatus, executions
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.membership import body_of
from gibsey.ledger.store import Store
from gibsey.ledger.testing import FeedWriter, effect_of

KEY = SigningKey(b"\x31" * 32)
TARGET = "ab" * 32


def funded(path: Path | None = None) -> Ledger:
    """alice 100 (weight 10), bob 49 (weight 7), carol 25 (weight 5): total weight 22."""
    ledger = Ledger(Store.open(path) if path else Store(":memory:"), KEY)
    for actor, amount in (("alice", 100), ("bob", 49), ("carol", 25)):
        ledger.mint(actor, amount, "read")
    return ledger


def with_peer(ledger: Ledger, seed: int) -> FeedWriter:
    """A second node of the ledger's gallery: both record the two of them as the members, so
    votes through the peer count (a gallery of two: a hearing needs both nodes' say)."""
    peer = FeedWriter(seed)
    ledger.record_members({peer.author})
    peer.observe(ledger.store.max_lamport)
    ledger.import_entry(peer.next("members", body_of({ledger.author, peer.author})))
    return peer


class Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, p: Proposal) -> str:
        self.calls.append(p.target)
        return f"applied {p.target[:8]}"


def registry(fn: Counter) -> Executors:
    ex = Executors()
    ex.register("config-change", fn)
    return ex


def test_passes_on_weighted_majority_and_executes_exactly_once(tmp_path: Path) -> None:
    ledger = funded(tmp_path)
    p = ledger.propose("config-change", TARGET, "louder dial", "alice")
    hearing = ledger.view().governance.proposals[p.hash]
    assert (hearing.weights, hearing.total) == ({"alice": 10, "bob": 7, "carol": 5}, 22)
    ledger.vote(p.hash_hex[:10], "alice", "yes")  # 10 of 22: not a majority yet
    assert hearing.status is ProposalStatus.OPEN
    counter = Counter()
    assert ledger.run_executors(registry(counter)) == []
    v = ledger.vote(p.hash_hex, "bob", "yes")  # 17 of 22
    assert ledger.view().governance.proposals[p.hash].status is ProposalStatus.PASSED
    assert ledger.view().governance.proposals[p.hash].decided_by == v.hash

    done = ledger.run_executors(registry(counter))
    assert [d.status for d in done] == ["executed"] and counter.calls == [TARGET]
    assert ledger.run_executors(registry(counter)) == []
    outcome = ledger.store.get(ledger.author, ledger.store.heads()[ledger.author.hex()])
    assert outcome is not None and outcome.type == "outcome"
    assert outcome.body == {
        "proposal": p.hash_hex,
        "action": "config-change",
        "status": "executed",
        "detail": f"applied {TARGET[:8]}",
    }
    with pytest.raises(LedgerError, match="passed"):
        ledger.vote(p.hash_hex, "carol", "no")
    ledger.close()

    again = Ledger(Store.open(tmp_path), KEY)  # a restart does not re-run it
    fresh = Counter()
    assert again.run_executors(registry(fresh)) == [] and fresh.calls == []
    assert executions(again.store)[p.hash].status == "executed"


def test_snapshot_weights_ignore_tokens_gained_after_the_proposal() -> None:
    ledger = funded()
    p = ledger.propose("opcode-table-change", TARGET, "swap glyphs", "alice")
    ledger.mint("dave", 1000, "read")
    with pytest.raises(LedgerError, match="no tokens"):
        ledger.vote(p.hash_hex, "dave", "yes")
    peer = with_peer(ledger, 7)  # a member that lets dave vote anyway: recorded, no effect
    v = peer.next("vote", {"proposal": p.hash_hex, "actor": "dave", "choice": "yes"})
    ledger.import_entry(v)
    eff = effect_of(ledger, v)
    assert not eff.applied and "no tokens at the snapshot" in eff.note
    assert ledger.view().governance.proposals[p.hash].yes == 0


def test_rejected_when_no_weight_reaches_half_and_double_votes_ignored() -> None:
    ledger = funded()
    p = ledger.propose("narrative-merge", TARGET, "merge branch b", "bob")
    peer = with_peer(ledger, 8)
    first = peer.next("vote", {"proposal": p.hash_hex, "actor": "alice", "choice": "no"})
    again = peer.next("vote", {"proposal": p.hash_hex, "actor": "alice", "choice": "yes"})
    ledger.import_many([first.raw, again.raw])
    assert "already voted" in effect_of(ledger, again).note
    ledger.vote(p.hash_hex, "bob", "yes")
    assert ledger.view().governance.proposals[p.hash].status is ProposalStatus.OPEN  # 7 yes, 10 no
    ledger.vote(p.hash_hex, "carol", "no")  # 15 no of 22 >= half, through both nodes
    assert ledger.view().governance.proposals[p.hash].status is ProposalStatus.REJECTED
    counter = Counter()
    assert ledger.run_executors(registry(counter)) == [] and counter.calls == []


def test_closes_by_lamport_not_wall_time() -> None:
    ledger = funded()
    p = ledger.propose("config-change", TARGET, "quiet hours", "carol")
    peer = with_peer(ledger, 9)
    # A vote whose wall clock says "far in the future" but whose Lamport clock is in the
    # window still counts; a later entry past the window closes the hearing.
    v = peer.next(
        "vote",
        {"proposal": p.hash_hex, "actor": "carol", "choice": "yes"},
        lamport=p.lamport + VOTE_WINDOW,
        wall=4_000_000_000_000,
    )
    ledger.import_entry(v)
    assert effect_of(ledger, v).applied
    assert ledger.view().governance.proposals[p.hash].status is ProposalStatus.OPEN
    ledger.mint("alice", 1, "read")  # lamport p.lamport + VOTE_WINDOW + 1
    assert ledger.view().governance.proposals[p.hash].status is ProposalStatus.EXPIRED
    late = peer.next("vote", {"proposal": p.hash_hex, "actor": "bob", "choice": "yes"})
    ledger.import_entry(late)
    assert "expired" in effect_of(ledger, late).note


def test_interrupted_executor_is_not_rerun_after_restart(tmp_path: Path) -> None:
    ledger = funded(tmp_path)
    p = ledger.propose("config-change", TARGET, "x", "alice")
    ledger.vote(p.hash_hex, "alice", "yes")
    ledger.vote(p.hash_hex, "bob", "yes")

    class Crash(BaseException):
        """Stands in for the process dying inside the executor."""

    def dies(_p: Proposal) -> str:
        raise Crash

    ex = Executors()
    ex.register("config-change", dies)
    with pytest.raises(Crash):
        ledger.run_executors(ex)
    ledger.close()

    again = Ledger(Store.open(tmp_path), KEY)
    counter = Counter()
    done = again.run_executors(registry(counter))
    assert counter.calls == [] and [d.status for d in done] == ["interrupted"]
    assert again.run_executors(registry(counter)) == []


def test_failing_executor_records_failure_once_and_missing_executor_waits() -> None:
    ledger = funded()
    p = ledger.propose("config-change", TARGET, "x", "alice")
    ledger.vote(p.hash_hex, "alice", "yes")
    ledger.vote(p.hash_hex, "bob", "yes")
    assert ledger.run_executors(Executors()) == []  # nobody can apply it yet: it waits

    def broken(_p: Proposal) -> str:
        raise RuntimeError("disk full")

    ex = Executors()
    ex.register("config-change", broken)
    done = ledger.run_executors(ex)
    assert [(d.status, d.detail) for d in done] == [("failed", "RuntimeError: disk full")]
    assert ledger.run_executors(registry(Counter())) == []


def test_void_when_nobody_holds_tokens() -> None:
    """Our node refuses to open a void hearing (nothing written); a peer's is void in the fold."""
    ledger = Ledger(Store(":memory:"), KEY)
    with pytest.raises(VoidHearing, match="no actor held tokens"):
        ledger.propose("config-change", TARGET, "x", "alice", refuse_void=True)
    assert ledger.store.count() == 0
    peer = FeedWriter(10)
    body = {"action": "config-change", "target": TARGET, "title": "x", "proposer": "alice"}
    p = peer.next("proposal", body)
    ledger.import_entry(p)
    assert ledger.view().governance.proposals[p.hash].status is ProposalStatus.VOID
