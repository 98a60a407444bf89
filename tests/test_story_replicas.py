"""Two nodes' feeds, given to replicas in different orders, fold into the same story graph."""

from __future__ import annotations

import random
from pathlib import Path

from gibsey.ledger.entry import Entry
from tests.story_support import FOX, make_story


def two_nodes_history(tmp_path: Path) -> list[list[Entry]]:
    """Node A imports, branches, writes, proposes and votes; node B (holding A's feed) writes on
    its own branch, votes the hearing through (a gallery of the two: a hearing needs both nodes'
    say) and proposes a rival merge."""
    a = make_story(tmp_path / "a", seed=1)
    b = make_story(tmp_path / "b", seed=2, sample=False)
    try:
        a.ledger.record_members({b.ledger.author})
        b.ledger.record_members({a.ledger.author})
        a.ledger.mint("london-fox", 100, "read")
        a.ledger.mint("todd-fishbone", 100, "read")
        a.create_branch("fox", actor="london-fox")
        base = a.page("main", FOX)[1].text
        a.write("fox", FOX, base.replace("twice", "three times"), "london-fox")
        a.write("fox", "001", "A longer preface, " * 400, "london-fox")  # several parts
        proposal = a.propose("fox", "london-fox")
        a.ledger.vote(proposal.entry.hash_hex, "london-fox", "yes")
        for e in a.ledger.store.iter_ordered():
            b.ledger.import_entry(e.raw)
        b.create_branch("todd", actor="todd-fishbone")
        b.write("todd", FOX, base.replace("counted", "recounted"), "todd-fishbone")
        b.ledger.vote(proposal.entry.hash_hex, "todd-fishbone", "yes")
        b.sync()
        assert b.head("main") == proposal.commit
        b.propose("todd", "todd-fishbone")
        feeds = []
        for s in (a, b):
            author = s.ledger.author
            feeds.append([e for e in s.ledger.store.iter_ordered() if e.author == author])
        return feeds
    finally:
        a.close_all()
        b.close_all()


def test_same_feeds_in_different_orders_give_the_same_graph(tmp_path: Path) -> None:
    feeds = two_nodes_history(tmp_path)
    snapshots = []
    for n, order in enumerate(("a-then-b", "b-then-a", "interleaved", "incremental")):
        r = make_story(tmp_path / f"r{n}", seed=10 + n, sample=False)
        try:
            if order == "a-then-b":
                r.ledger.import_many([e.raw for e in feeds[0] + feeds[1]])
            elif order == "b-then-a":
                r.ledger.import_many([e.raw for e in feeds[1] + feeds[0]])
            else:
                rng = random.Random(n)
                queues = [list(f) for f in feeds]
                while any(queues):
                    q = rng.choice([q for q in queues if q])
                    r.ledger.import_entry(q.pop(0).raw)
                    if order == "incremental":
                        r.sync()  # folds as entries arrive, rebuilding when one sorts earlier
            r.sync()
            snap = r.graph.snapshot()
            assert r.head("main") != "" and len(snap["branches"]) == 3
            snapshots.append(snap)
            assert r.graph.hearings()[0].status == "applied"
        finally:
            r.close_all()
    for other in snapshots[1:]:
        for table, rows in snapshots[0].items():
            assert other[table] == rows, table
