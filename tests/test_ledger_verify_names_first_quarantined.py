"""`gibsey ledger verify` names the row where a feed's quarantine starts (CANONICAL.md section 5).

A bad row after unsigned entries takes their head with it: nothing vouches for the run before
it any more, so the read commands quarantine the feed from the run's first entry. `verify`
must name that same row (it said the bad row only, and that "the entries before it still
count", while `export`, `balance` and `show` already left the run out).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gibsey.ledger.store import DB_FILENAME, Store
from gibsey.ledger.testing import FeedWriter

MINT = {"actor": "london-fox", "amount": 1, "ritual": "read"}


def _store_with_bad_head(tmp_path: Path, damage: str) -> Store:
    """A feed: seq 1 signed, 2-3 unsigned, 4 their head (damaged as told), 5 signed."""
    writer = FeedWriter(91)
    feed = [writer.next("mint", MINT, head=seq in (1, 4, 5)) for seq in range(1, 6)]
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.executemany(
        "INSERT INTO entries (author, seq, hash, lamport, type, raw) VALUES (?,?,?,?,?,?)",
        [(e.author, e.seq, e.hash, e.lamport, e.type, e.raw) for e in feed],
    )
    if damage == "index":
        db.execute("UPDATE entries SET lamport = lamport + 5 WHERE seq = 4")
    elif damage == "signature":
        raw = bytearray(feed[3].raw)
        raw[-1] ^= 1
        db.execute("UPDATE entries SET raw = ? WHERE seq = 4", (bytes(raw),))
    else:
        db.execute("DELETE FROM entries WHERE seq = 4")
    db.commit()
    db.close()
    return Store.open(tmp_path)


@pytest.mark.parametrize("damage", ["index", "signature", "deleted"])
def test_verify_names_the_first_entry_its_bad_head_leaves_unvouched(
    tmp_path: Path, damage: str
) -> None:
    store = _store_with_bad_head(tmp_path, damage)
    report = store.verify()
    assert not report.ok
    assert [b.seq for b in store.bad_rows()] == [2]  # what the read commands quarantine
    assert report.bad_seq == 2, report.problem
    assert "no signed head" in report.problem
    # and says why: the bad row itself (with seq 4 deleted, seq 5 no longer chains)
    assert f"(seq {5 if damage == 'deleted' else 4}: " in report.problem
    assert store.heads() == {FeedWriter(91).author.hex(): 1}
    store.close()
