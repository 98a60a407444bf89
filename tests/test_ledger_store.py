"""The SQLite store: appends, imports, every rejection, fork proofs and quarantine."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.ledger import canonical
from gibsey.ledger.entry import MAX_BODY_BYTES, payload_object
from gibsey.ledger.errors import LedgerError, Rejected, RejectReason
from gibsey.ledger.forkproof import ForkProof
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import ImportStatus, Store
from gibsey.ledger.testing import FeedWriter, effect_of, forge, sign_payload

MINT = {"actor": "london-fox", "amount": 10, "ritual": "read"}


def dump(store: Store) -> list[str]:
    """Everything in the database, as SQL text: equal dumps mean an unchanged store."""
    return list(store.db.iterdump())


def test_append_survives_reopen_and_verifies(tmp_path: Path) -> None:
    key = SigningKey(b"\x07" * 32)
    store = Store.open(tmp_path)
    entries = [store.append(key, "mint", MINT) for _ in range(5)]
    entries += store.append_many(key, [("burn", {"actor": "london-fox", "amount": 1})] * 3)
    assert [e.seq for e in entries] == list(range(1, 9))
    assert [e.lamport for e in entries] == list(range(1, 9))
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    store.close()

    again = Store.open(tmp_path)
    assert again.heads() == {bytes(key.verify_key).hex(): 8}
    report = again.verify()
    assert report.ok and (report.entries, report.feeds) == (8, 1)
    # The three of one append_many are one group (format v2): only its last entry is signed,
    # and a peer is always sent a group whole, with its head.
    assert [e.signed for e in entries[5:]] == [False, False, True]
    assert [e.hash for e in again.entries_after(bytes(key.verify_key), 5, 2)] == [
        entries[5].hash,
        entries[6].hash,
        entries[7].hash,
    ]
    nxt = again.append(key, "mint", MINT)
    assert (nxt.seq, nxt.prev, nxt.lamport) == (9, entries[-1].hash, 9)


def test_import_foreign_feed_and_lamport_follows(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    peer = FeedWriter(1)
    for lam in (5, 9, 40):
        r = store.import_entry(peer.next("mint", MINT, lamport=lam).raw)
        assert r.status is ImportStatus.APPENDED
    assert store.import_entry(peer.entries[1]).status is ImportStatus.DUPLICATE
    own = store.append(SigningKey(b"\x02" * 32), "mint", MINT)
    assert own.lamport == 41  # above every entry this node has seen
    assert store.verify().ok and store.verify().feeds == 2


def _bad_entries(peer: FeedWriter) -> dict[str, tuple[RejectReason, bytes]]:
    """One entry per fault, each signed by the peer (unless the fault is the signature)."""
    good = peer.next("mint", MINT)  # seq 3 - built, never imported
    peer.seq, peer.prev = good.seq - 1, good.prev  # rewind: seq 3 is still the next slot
    key, author = peer.key, peer.author

    def payload(**changes: object) -> dict[str, object]:
        obj = payload_object(author, 3, good.prev, 50, 0, "mint", dict(MINT))
        obj.update(changes)
        return obj

    big_memo = "x" * (MAX_BODY_BYTES + 10)
    flipped = good.raw[:-5] + bytes([good.raw[-5] ^ 0x40]) + good.raw[-4:]
    return {
        "bad signature": (RejectReason.BAD_SIGNATURE, flipped),
        "foreign key signed": (
            RejectReason.BAD_SIGNATURE,
            sign_payload(SigningKey(b"\x09" * 32), good.payload),
        ),
        "wrong prev": (RejectReason.WRONG_PREV, forge(key, payload(prev="ab" * 32))),
        "skipped seq": (RejectReason.SKIPPED_SEQ, forge(key, payload(seq=5))),
        "oversized body": (
            RejectReason.BODY_TOO_LARGE,
            forge(key, payload(type="gift", body={"memo": big_memo})),
        ),
        "oversized entry": (RejectReason.TOO_LARGE, good.raw + b" " * 9000),
        "garbage": (RejectReason.MALFORMED, bytes(range(256)) * 2),
        "empty": (RejectReason.MALFORMED, b""),
        "truncated": (RejectReason.MALFORMED, good.raw[:-70]),
        "unknown type": (RejectReason.UNKNOWN_TYPE, forge(key, payload(type="teleport"))),
        "invalid body": (
            RejectReason.INVALID_BODY,
            forge(key, payload(body={"actor": "London Fox!", "amount": 1, "ritual": "r"})),
        ),
        "float in body": (
            RejectReason.MALFORMED,
            sign_payload(
                key, canonical.encode(payload()).replace(b'"amount":10', b'"amount":10.0')
            ),
        ),
        "not canonical": (
            RejectReason.NOT_CANONICAL,
            sign_payload(key, canonical.encode(payload()).replace(b'"seq":3', b'"seq": 3')),
        ),
        "lamport regression": (RejectReason.LAMPORT_REGRESSION, forge(key, payload(lamport=1))),
        "seq 1 with prev": (RejectReason.MALFORMED, forge(key, payload(seq=1))),
    }


@pytest.mark.parametrize("fault", list(_bad_entries(FeedWriter(3)).keys()))
def test_every_rejection_leaves_the_store_unchanged(tmp_path: Path, fault: str) -> None:
    store = Store.open(tmp_path)
    peer = FeedWriter(3)
    for _ in range(2):
        store.import_entry(peer.next("mint", MINT, lamport=peer.lamport + 10).raw)
    store.append(SigningKey(b"\x05" * 32), "mint", MINT)
    before, heads = dump(store), store.heads()
    reason, raw = _bad_entries(peer)[fault]
    with pytest.raises(Rejected) as info:
        store.import_entry(raw)
    assert info.value.reason is reason, info.value
    assert dump(store) == before and store.heads() == heads
    # The same through the batch path, next to a good entry that does go in.
    good = peer.next("mint", MINT)
    results = store.import_many([raw, good.raw])
    assert isinstance(results[0], Rejected) and results[0].reason is reason
    assert not isinstance(results[1], Rejected) and results[1].status is ImportStatus.APPENDED
    assert store.verify().ok


def test_verify_reports_first_tampered_entry(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    key = SigningKey(b"\x01" * 32)
    entries = [store.append(key, "mint", MINT) for _ in range(4)]
    forged = entries[2].raw.replace(b'"amount":10', b'"amount":99')
    store.db.execute("UPDATE entries SET raw = ? WHERE seq = 3", (forged,))
    report = store.verify()
    assert not report.ok and report.bad_seq == 3 and "bad-signature" in report.problem
    store.db.execute("UPDATE entries SET raw = ? WHERE seq = 3", (entries[2].raw,))
    store.db.execute("DELETE FROM entries WHERE seq = 2")
    report = store.verify()
    assert not report.ok and report.bad_seq == 3 and "gap" in report.problem


def _forked_peer() -> tuple[FeedWriter, FeedWriter]:
    """Two histories of one key that agree on seq 1 and differ from seq 2 (a restored backup)."""
    honest, restored = FeedWriter(11), FeedWriter(11)
    e1 = honest.next("mint", MINT, lamport=1)
    restored.seq, restored.prev, restored.lamport = 1, e1.hash, 1
    for _ in range(3):
        honest.next("mint", MINT)
    restored.next("mint", {**MINT, "amount": 500})  # its seq 2
    restored.next("mint", MINT)
    return honest, restored


def ledger_with_a_fork(data: Path) -> tuple[FeedWriter, ForkProof]:
    """A ledger in `data` (closed again) holding the honest feed of `_forked_peer` and the
    fork proof its restored twin's seq 2 made: the feed, and the proof."""
    honest, restored = _forked_peer()
    ledger = Ledger(Store.open(data), SigningKey(b"\x21" * 32))
    for e in honest.entries:
        ledger.import_entry(e.raw)
    proof = ledger.import_entry(restored.entries[0].raw).proof
    assert proof is not None
    ledger.close()
    return honest, proof


def test_fork_is_proved_quarantined_and_shared(tmp_path: Path) -> None:
    honest, restored = _forked_peer()
    a = Ledger(Store.open(tmp_path / "a"), SigningKey(b"\x21" * 32))
    for e in honest.entries:
        a.import_entry(e.raw)
    assert a.view().economy.balance("london-fox") == 40
    r = a.import_entry(restored.entries[0].raw)  # a second, different seq 2
    assert r.status is ImportStatus.FORK and r.proof is not None
    assert a.store.quarantine() == {honest.author: 2}
    # Seq 2 onward no longer counts; seq 1 still does. The log itself is kept.
    assert a.view().economy.balance("london-fox") == 10
    assert a.store.count() == 4 and a.store.verify().ok
    assert "quarantined" in effect_of(a, honest.entries[3]).note
    with pytest.raises(Rejected) as info:
        a.import_entry(honest.next("mint", MINT).raw)
    assert info.value.reason is RejectReason.AUTHOR_QUARANTINED

    proof = r.proof.to_bytes()
    assert [p.to_bytes() for p in a.store.fork_proofs()] == [proof]
    b = Ledger(Store.open(tmp_path / "b"), SigningKey(b"\x22" * 32))
    for e in honest.entries[:4]:
        b.import_entry(e.raw)
    assert b.view().economy.balance("london-fox") == 40
    assert b.import_fork_proof(proof) is True
    assert b.import_fork_proof(proof) is False  # already known
    assert b.store.quarantine() == {honest.author: 2}
    assert b.view().economy.balances == a.view().economy.balances
    b.store.close()
    reopened = Store.open(tmp_path / "b")  # quarantine is durable
    assert reopened.quarantine() == {honest.author: 2} and reopened.verify().ok


def test_export_gives_an_outsider_the_proofs_it_needs_to_fold_alike(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """`gibsey ledger export` prints a forked feed's entries past the fork too (they are held);
    without the proof, a verifier folding them counts what the node does not (an outsider's
    own verifier did: minted 216 where the node showed 111). `export --proofs` prints each
    proof held, one a line, the bytes a peer takes."""
    from gibsey.cli import main

    data = tmp_path / "a"
    honest, proof = ledger_with_a_fork(data)
    assert main(["--data", str(data), "ledger", "export"]) == 0
    assert len(capsysbinary.readouterr().out.splitlines()) == 4  # seq 2-4 held, quarantined
    assert main(["--data", str(data), "ledger", "export", "--proofs"]) == 0
    assert capsysbinary.readouterr().out.splitlines() == [proof.to_bytes()]
    b = Ledger(Store.open(tmp_path / "b"), SigningKey(b"\x22" * 32))
    for e in honest.entries:
        b.import_entry(e.raw)
    assert b.import_fork_proof(proof.to_bytes()) is True  # the exported line, as it is
    again = Ledger.open(data)
    assert b.view().economy.balances == again.view().economy.balances
    again.close()
    b.close()


@pytest.mark.parametrize(
    "tamper", ["signature", "same entry twice", "different authors", "garbage"]
)
def test_bad_fork_proofs_are_rejected(tmp_path: Path, tamper: str) -> None:
    honest, restored = _forked_peer()
    proof = Store(":memory:")
    for e in honest.entries[:2]:
        proof.import_entry(e)
    res = proof.import_entry(restored.entries[0])
    assert res.proof is not None
    a, b = res.proof.a.raw, res.proof.b.raw
    other = FeedWriter(99).next("mint", MINT).raw

    def obj(x: bytes, y: bytes) -> bytes:
        return canonical.encode({"a": x.hex(), "b": y.hex(), "kind": "gibsey-fork-proof", "v": 1})

    data = {
        "signature": obj(a, b[:-1] + bytes([b[-1] ^ 1])),
        "same entry twice": obj(a, a),
        "different authors": obj(a, other),
        "garbage": b"\x00garbage",
    }[tamper]
    store = Store.open(tmp_path)
    before = dump(store)
    with pytest.raises(Rejected) as info:
        store.import_fork_proof(data)
    assert info.value.reason is RejectReason.BAD_FORK_PROOF
    assert dump(store) == before


def test_own_forked_feed_refuses_to_append(tmp_path: Path) -> None:
    honest, restored = _forked_peer()
    store = Store.open(tmp_path)
    for e in honest.entries[:2]:
        store.import_entry(e)
    store.import_entry(restored.entries[0])
    with pytest.raises(LedgerError, match="forked"):
        store.append(honest.key, "mint", MINT)


def test_failed_append_check_changes_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    key = SigningKey(b"\x01" * 32)
    store.append(key, "mint", MINT)
    before = dump(store)

    def refuse() -> None:
        raise LedgerError("no")

    with pytest.raises(LedgerError):
        store.append(key, "mint", MINT, check=refuse)
    with pytest.raises(Rejected):
        store.append(key, "mint", {"actor": "x", "amount": 0, "ritual": "r"})
    assert dump(store) == before
    assert store.append(key, "mint", MINT).seq == 2


def test_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert (tmp_path / "ledger.sqlite3").exists()
    # A second connection (another process) sees committed appends immediately.
    store.append(SigningKey(b"\x01" * 32), "mint", MINT)
    other = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert other.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 1


class _LockWatch:
    """The store's lock, calling `on_free` each time the thread `owner` lets it go entirely:
    the moment another thread can first get in."""

    def __init__(self, on_free: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self.on_free = on_free
        self.owner: threading.Thread | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self._depth += 1
        return got

    def release(self) -> None:
        self._depth -= 1
        free = self._depth == 0
        self._lock.release()
        if free and threading.current_thread() is self.owner:
            self.on_free()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.mark.parametrize("how", ["import", "append_many"])
def test_another_thread_never_finds_a_stored_batch_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Entries a transaction stored are marked checked before the store lock is let go, so a
    thread asking for heads at that moment (the mesh's version vector, every round of a
    catch-up) is not sent to parse the whole batch again from the table."""
    store = Store.open(tmp_path)
    peer = FeedWriter(3)
    raws = [peer.next("mint", MINT).raw for _ in range(300)]
    key = SigningKey(b"\x05" * 32)
    reparsed: list[int] = []
    check_from = store._check_from

    def counted(author: bytes, done: object) -> object:
        if threading.current_thread() is not watch.owner:  # (the writer's own looks are not)
            reparsed.append(1)
        return check_from(author, done)  # type: ignore[arg-type]

    seen: list[dict[str, int]] = []

    def ask_from_another_thread() -> None:
        asker = threading.Thread(target=lambda: seen.append(store.heads()))
        asker.start()
        asker.join()

    watch = _LockWatch(ask_from_another_thread)
    monkeypatch.setattr(store, "_check_from", counted)
    store.lock = watch  # type: ignore[assignment]
    watch.owner = threading.current_thread()
    if how == "import":
        results = store.import_many(raws)
        assert all(r.status is ImportStatus.APPENDED for r in results)  # type: ignore[union-attr]
        author, top = peer.author.hex(), 300
    else:
        store.append_many(key, [("mint", MINT)] * 300)
        author, top = bytes(key.verify_key).hex(), 300
    watch.owner = None
    assert seen, "the lock was never let go"
    assert seen[-1][author] == top
    assert reparsed == [], "a thread asking for heads parsed the stored batch again"


def test_an_import_with_rejections_is_freed_with_its_results(tmp_path: Path) -> None:
    """Tried: a batch imported with entries refused in it (a gap: a peer's two streams out of
    order), and its results dropped. Must hold: everything the import parsed is freed at once,
    none of it left in a reference cycle for the collector (a rejection kept with its traceback
    held the import's frame, so its results and every parsed entry: a mesh catch-up of story
    entries held three or four 1 MiB batches so, ~4x their bytes each, and its memory bound
    failed in CI)."""
    import gc

    key = SigningKey(b"\x0b" * 32)
    source = Store.open(tmp_path / "a")
    raws = [e.raw for e in source.append_many(key, [("mint", MINT)] * 300)]
    source.close()
    store = Store.open(tmp_path / "b")
    gc.collect()
    gc.disable()
    try:
        results = store.import_many(raws[:100] + raws[150:200])
        assert any(isinstance(r, Rejected) for r in results)
        assert all(r.__traceback__ is None for r in results if isinstance(r, Rejected))
        del results
        left = gc.collect()
    finally:
        gc.enable()
    assert left == 0, f"{left} objects of the import were left to the collector"
    store.close()
