"""Governance and the mint budget (issue 16, item 4, and the per-node mint budget of item 5).

What is tried: a member of the gallery gone rogue signs valid but greedy entries - sixty mints
of the largest amount, with forged wall clocks (far ahead, zero, jumping) and a forged Lamport
jump, a hearing decided by its vote alone, a membership list naming only itself and a key it
made up, and the feed of that made-up key full of mints - and real `gibsey mesh serve`
processes replicate it over ZeroMQ into two honest nodes. One honest node tries to pass a
hearing alone in a gallery of three. `gibsey story propose` is run on a node where nobody holds
tokens. A running node's rituals mint past its budget.

What must hold: every honest node's balances move by at most the mint budget for the rogue's
feed, nothing for the made-up key, and the honest nodes' views agree; a hearing passes only with
yes-votes through a majority of the gallery's member nodes; a void hearing is refused before
anything is written; a mint over the node's budget is never written, is counted and is said once
(ledger/GOVERNANCE.md, ledger/ECONOMY.md).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gibsey.core.identity import load_or_create
from gibsey.ledger.economy import MINT_BUDGET
from gibsey.ledger.entry import Entry, now_ms
from gibsey.ledger.errors import OverMintBudget
from gibsey.ledger.governance import ProposalStatus
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.membership import body_of
from gibsey.ledger.store import Store
from gibsey.ledger.testing import FeedWriter
from gibsey.ledger.view import View
from tests.brokers import free_port
from tests.conftest import CollectorFactory, RunningNode
from tests.events import raw_event, topic
from tests.mesh_support import MeshProc, append_mints, heads, make_nodes, wait_until

REPO = Path(__file__).resolve().parents[2]
TARGET = "cd" * 32


def gibsey(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gibsey", "--data", str(data), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def view_of(data: Path) -> View:
    """The node's view, folded by a separate reader of its store (the node serves meanwhile)."""
    ledger = Ledger.open(data)
    try:
        return ledger.rebuild()
    finally:
        ledger.close()


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[list[MeshProc]]:
    """Three nodes that allow each other, not started; stopped on the way out."""
    nodes = make_nodes(tmp_path, ["127.0.0.1"] * 3, [free_port() for _ in range(3)])
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def greedy_feed(rogue: FeedWriter) -> list[Entry]:
    """Sixty mints of 1000 to mallory under forged clocks, then a hearing and its only vote."""
    walls = [2**50, 0, 2**50 + 10**9, 1, 2**49, 10**15]  # ahead, zero, jumping, behind
    out = []
    for i in range(60):
        lamport = rogue.lamport + (1 if i != 30 else 5000)  # a forged Lamport jump halfway
        body = {"actor": "mallory", "amount": 1000, "ritual": "read"}
        out.append(rogue.next("mint", body, lamport=lamport, wall=walls[i % len(walls)]))
    proposal = {"action": "config-change", "target": TARGET, "title": "all power to mallory"}
    p = rogue.next("proposal", {**proposal, "proposer": "mallory"}, wall=2**50)
    vote = {"proposal": p.hash_hex, "actor": "mallory", "choice": "yes"}
    out += [p, rogue.next("vote", vote, wall=0)]
    return out


def test_a_rogue_members_greedy_entries_are_bounded_on_every_honest_node(
    gallery: list[MeshProc],
) -> None:
    """Tried: the rogue's feed (greedy mints under forged clocks, a hearing it votes through
    alone, a list naming only itself and a made-up key, that key's feed of mints) replicated
    over the real mesh into two honest nodes. Must hold: each honest view holds the rogue's
    mints up to MINT_BUDGET exactly (the rest recorded with "over mint budget"), nothing of the
    made-up key, the rogue's hearing still open; both honest views agree, entry by entry."""
    # The rogue's key sorts first, so its first mint (clock far ahead) folds before any other
    # feed: the fold cannot hold that clock back, and still it buys nothing.
    rogue_proc, a, b = sorted(gallery, key=lambda n: n.key)
    rogue = FeedWriter(bytes(load_or_create(rogue_proc.data).signing_key))
    sybil = FeedWriter(b"\x5b" * 32)  # a key on nobody's allow-list
    made_up = [sybil.next("mint", {"actor": "sybil-fox", "amount": 1000, "ritual": "r"})]
    made_up += [sybil.next("members", body_of({sybil.author, rogue.author}))]
    store = Store.open(rogue_proc.data)
    try:
        store.import_many([e.raw for e in greedy_feed(rogue) + made_up])
    finally:
        store.close()
    for n in gallery:
        n.start()
    store = Store.open(rogue_proc.data)  # its own list after the one its mesh recorded
    try:
        store.append(rogue.key, "members", body_of({rogue.author, sybil.author}))
    finally:
        store.close()
    append_mints(a.data, 5, "london-fox")
    append_mints(b.data, 3, "glyph-marrow")
    # Honest feeds: a list and the mints; the rogue's: 62 signed above, its mesh's list, its own.
    want = {a.key: 6, b.key: 4, rogue_proc.key: 64}
    wait_until(lambda: heads(a.data) == want and heads(b.data) == want, 60, "replication")
    assert sybil.author.hex() in heads(rogue_proc.data)  # it was there to relay, and refused

    views = [view_of(a.data), view_of(b.data)]
    assert views[0].effects == views[1].effects
    for v in views:
        assert v.economy.balances == {"mallory": MINT_BUDGET, "london-fox": 5, "glyph-marrow": 3}
        refused = [x.note for x in v.effects.values() if "over mint budget" in x.note]
        assert len(refused) == 60 - MINT_BUDGET // 1000
        assert v.governance.members == frozenset(bytes.fromhex(n.key) for n in gallery)
        [hearing] = v.governance.proposals.values()
        assert hearing.status is ProposalStatus.OPEN and hearing.yes_nodes == {rogue.author}
        assert 2 * hearing.yes > hearing.total  # the weight was there; the nodes were not


def test_one_node_alone_cannot_pass_a_hearing_in_a_gallery_of_three(
    gallery: list[MeshProc],
) -> None:
    """Tried: on node a of a gallery of three, mint, open a hearing and vote every actor yes
    through a (`gibsey ledger` commands while the mesh serves). Must hold: the hearing stays
    open on every node; one more yes through b passes it everywhere."""
    a, b, _ = gallery
    for n in gallery:
        n.start()
    for actor in ("alice", "bob", "carol"):
        assert gibsey(a.data, "ledger", "mint", actor, "100").returncode == 0
    out = gibsey(a.data, "ledger", "propose", "config-change", "--target", TARGET,
                 "--title", "louder dial", "--by", "alice")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    hearing = bytes.fromhex(out.stdout.split("hearing opened: ")[1].split()[0])
    for actor in ("alice", "bob"):
        vote = gibsey(a.data, "ledger", "vote", hearing.hex(), "yes", "--as", actor)
        assert vote.returncode == 0, vote.stdout + vote.stderr

    def status(n: MeshProc) -> Any:
        p = view_of(n.data).governance.proposals.get(hearing)
        return None if p is None else (p.status, p.yes, len(p.yes_nodes), len(p.nodes))

    alone = (ProposalStatus.OPEN, 20, 1, 3)  # 20 of 30 weight, through one node of three
    wait_until(lambda: all(status(n) == alone for n in gallery), 30, "the votes everywhere")
    vote = gibsey(b.data, "ledger", "vote", hearing.hex(), "yes", "--as", "carol")
    assert vote.returncode == 0, vote.stdout + vote.stderr
    passed = (ProposalStatus.PASSED, 30, 2, 3)
    wait_until(lambda: all(status(n) == passed for n in gallery), 30, "passed everywhere")


def test_a_backdated_hearing_still_needs_the_gallerys_nodes() -> None:
    """Tried: a rogue member signs its mints, a hearing and its vote with Lamport clocks below
    every entry of the honest nodes, their membership lists included (so at that point of the
    fold no list but its own was folded yet). Must hold: the gallery is read from every feed's
    latest list, not from the lists folded so far: the hearing needs two of the three nodes and
    stays open; the honest lists arriving later do not change that."""
    honest = [FeedWriter(201), FeedWriter(202)]
    rogue = FeedWriter(203)
    three = body_of({w.author for w in (*honest, rogue)})
    backdated = [rogue.next("members", body_of({rogue.author}), lamport=1)]
    backdated.append(rogue.next("mint", {"actor": "mallory", "amount": 900, "ritual": "r"}))
    body = {"action": "config-change", "target": TARGET, "title": "t", "proposer": "mallory"}
    p = rogue.next("proposal", body)
    backdated.append(p)
    backdated.append(
        rogue.next("vote", {"proposal": p.hash_hex, "actor": "mallory", "choice": "yes"})
    )
    lists = [w.next("members", three, lamport=100) for w in honest]
    for order in (backdated + lists, lists + backdated):
        ledger = Ledger(Store(":memory:"), honest[0].key)
        ledger.import_many([e.raw for e in order])
        hearing = ledger.view().governance.proposals[p.hash]
        assert ledger.view().governance.members == {w.author for w in (*honest, rogue)}
        assert (hearing.status, hearing.yes, hearing.total) == (ProposalStatus.OPEN, 30, 30)
        assert hearing.yes_nodes == {rogue.author} and len(hearing.nodes) == 3
        ledger.close()


def test_story_propose_refuses_a_void_hearing_before_writing(tmp_path: Path) -> None:
    """Tried: `gibsey story propose` (and `gibsey ledger propose`) on a node where nobody holds
    tokens. Must hold: non-zero exit, a message saying the hearing would be void, and not one
    ledger entry written."""
    data = tmp_path / "node"
    assert gibsey(data, "story", "import", "--sample").returncode == 0
    assert gibsey(data, "story", "branch", "fox", "--actor", "london-fox").returncode == 0
    page = tmp_path / "page.md"
    page.write_text("# London Fox Counts the Exits\n\nShe counted them three times.\n")
    wrote = gibsey(data, "story", "write", "fox", "004", "--file", str(page))
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    before = gibsey(data, "ledger", "verify").stdout
    out = gibsey(data, "story", "propose", "fox", "--actor", "london-fox")
    said = out.stdout + out.stderr
    assert out.returncode == 1, said
    assert "the hearing would be void: no actor held tokens" in said
    assert "nothing was written" in said
    out = gibsey(data, "ledger", "propose", "config-change", "--target", TARGET,
                 "--title", "x", "--by", "london-fox")  # fmt: skip
    said = out.stdout + out.stderr
    assert out.returncode == 1 and "the hearing would be void: no actor held tokens" in said, said
    assert gibsey(data, "ledger", "verify").stdout == before


def test_a_mint_over_the_budget_is_refused_before_any_write(tmp_path: Path) -> None:
    """Tried: `Ledger.mint` past the budget (the node's own clock held where it spent it).
    Must hold: OverMintBudget, nothing appended; the CLI says so and exits 1."""
    ledger = Ledger.open(tmp_path)
    try:
        ahead = now_ms() + 86_400_000  # spent at a clock a day ahead: no refill until then
        for _ in range(MINT_BUDGET // 1000):
            body = {"actor": "mallory", "amount": 1000, "ritual": "read"}
            ledger.store.append(ledger.key, "mint", body, wall=ahead)
        count = ledger.store.count()
        with pytest.raises(OverMintBudget, match=r"over mint budget: node .* may mint 0 now"):
            ledger.mint("mallory", 1, "read")
        assert ledger.store.count() == count
    finally:
        ledger.close()
    out = gibsey(tmp_path, "ledger", "mint", "london-fox", "1")
    assert out.returncode == 1 and "refused: over mint budget" in out.stderr, out.stderr


async def test_rituals_over_the_budget_write_nothing_count_and_alert_once(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried: two Read rituals (each mints 1) on a running node whose budget is spent. Must
    hold: neither mint is written or announced; the runtime counts both; one safety/alert."""
    nid, node = running_node.node_id, running_node.node
    ledger, glyph = node.parts.ledger, node.parts.glyph
    assert ledger is not None and glyph is not None
    ahead = now_ms() + 86_400_000
    for _ in range(MINT_BUDGET // 1000):
        body = {"actor": "mallory", "amount": 1000, "ritual": "read"}
        ledger.store.append(ledger.key, "mint", body, wall=ahead)
    count = ledger.store.count()
    kinds = ("ritual/performed", "gift/txn", "safety/alert")
    col = await collector_factory(running_node.port, *(topic(nid, k) for k in kinds))
    for i in range(2):
        turn = raw_event(nid, "glyph/rotated", {"symbol": 2, "rotation": 0},
                         event_id=f"read-{i}", actor="ada")  # fmt: skip
        await col.publish(topic(nid, "glyph/rotated"), turn)

    def alerted(c: Any) -> list[dict[str, Any]] | None:
        found = [e for e in c.of_kind("safety/alert") if e["payload"]["reason"] == "mint_throttled"]
        return found or None

    alerts = await col.wait_for(alerted)
    # The second refusal sends nothing (that is the point): poll the counter, with a deadline.
    deadline = time.monotonic() + 10
    while glyph.over_budget.total < 2:
        assert time.monotonic() < deadline, f"{glyph.over_budget.total} of 2 mints refused"
        await asyncio.sleep(0.01)
    assert glyph.over_budget.total == 2
    await col.wait_for(lambda c: len(c.of_kind("ritual/performed")) == 2)  # both turns ran
    assert len(alerts) == 1 and "over mint budget" in alerts[0]["payload"]["detail"]
    assert ledger.store.count() == count
    assert [e for e in col.of_kind("gift/txn") if e["payload"]["type"] == "mint"] == []
    assert ledger.view().economy.balance("ada") == 0
