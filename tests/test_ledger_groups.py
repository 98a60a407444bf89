"""Format v2: group-head signatures (CANONICAL.md sections 1 and 3).

Only a group's last entry (its head) carries a signature; the entries before it are vouched for
by the hash chain up to that head. What must hold: an outsider's verifier written from
CANONICAL.md alone accepts a mixed v1/v2 feed and refuses unsigned tails and over-long groups;
the store never holds an unsigned entry whose head it has not seen, holds pending entries only
within their bound, and builds fork proofs across groups that anyone can check offline.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gibsey.core.identity import load_or_create
from gibsey.harness.ports import free_port
from gibsey.ledger import forkproof
from gibsey.ledger.entry import MAX_GROUP, Entry, payload_object
from gibsey.ledger.errors import Rejected, RejectReason
from gibsey.ledger.store import DB_FILENAME, MAX_PENDING_ENTRIES, ImportStatus, Store
from gibsey.ledger.testing import FeedWriter, forge
from tests.mesh_support import REPO, MeshProc, heads, make_nodes

MINT = {"actor": "london-fox", "amount": 1, "ritual": "read"}
CANONICAL_MD = Path(__file__).resolve().parent.parent / "ledger" / "CANONICAL.md"


# ---- an outsider's verifier, written from CANONICAL.md alone ------------------------------------


def _canonical(value: Any) -> bytes:
    """Section 2: sorted keys, no whitespace, UTF-8 literal, minimal escapes."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes) -> Any:
    value = json.loads(data.decode("utf-8"))
    if _canonical(value) != data:
        raise ValueError("not canonical")
    return value


V1_FIELDS = {"author", "body", "lamport", "prev", "seq", "type", "v", "wall"}


def _split(entry: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """Section 1: the whole entry, if it is a canonical object, is an unsigned v2 entry;
    otherwise the last 64 bytes are the signature."""
    try:
        obj = _decode(entry)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        if obj.get("v") != 2 or obj.get("head") is not False:
            raise ValueError("a whole-object entry must be v2 with head false")
        return entry, b"", obj
    payload, sig = entry[:-64], entry[-64:]
    obj = _decode(payload)
    if obj.get("v") == 1 and set(obj) != V1_FIELDS:
        raise ValueError("v1 fields")
    if obj.get("v") == 2 and (set(obj) != V1_FIELDS | {"head"} or obj["head"] is not True):
        raise ValueError("a signed v2 entry has head true")
    return payload, sig, obj


def outsider_verify(feed: list[bytes]) -> str | None:
    """Problems of one feed's entries in seq order (None: every entry is vouched for)."""
    prev_hash, prev_lamport, unsigned, unsigned_bytes = None, 0, 0, 0
    for n, entry in enumerate(feed, start=1):
        try:
            payload, sig, obj = _split(entry)
        except ValueError as exc:
            return f"seq {n}: {exc}"
        if obj["seq"] != n or obj["prev"] != prev_hash or obj["lamport"] <= prev_lamport:
            return f"seq {n}: chain"
        if sig:
            try:
                VerifyKey(bytes.fromhex(obj["author"])).verify(
                    b"gibsey/ledger/v1\x00" + payload, sig
                )
            except BadSignatureError:
                return f"seq {n}: signature"
            unsigned = unsigned_bytes = 0
        else:
            unsigned, unsigned_bytes = unsigned + 1, unsigned_bytes + len(entry)
            if unsigned > 63:
                return f"seq {n}: more than 63 unsigned entries in a row"
            if unsigned_bytes > 32768:
                return f"seq {n}: more than 32768 bytes of unsigned entries in a row"
        prev_hash, prev_lamport = hashlib.sha256(entry).hexdigest(), obj["lamport"]
    return f"seq {len(feed)}: unsigned tail, no signed head" if unsigned else None


def mixed_feed(writer: FeedWriter) -> list[Entry]:
    """Two v1 entries, then v2 groups of 3, 1 and MAX_GROUP entries."""
    out = [writer.next("mint", MINT, version=1) for _ in range(2)]
    for size in (3, 1, MAX_GROUP):
        out += [writer.next("mint", MINT, head=i == size - 1) for i in range(size)]
    return out


def test_the_document_states_the_rules_an_outsider_needs() -> None:
    doc = CANONICAL_MD.read_text()
    for needle in (
        '"head"',
        "unsigned",
        "MAX_GROUP",
        "63",
        "32768",
        "pending",
        "segment",
        '"v": 2',
    ):
        assert needle in doc, needle


def test_an_outsider_verifies_a_mixed_v1_v2_feed_exported_by_the_store(tmp_path: Path) -> None:
    writer = FeedWriter(61)
    feed = mixed_feed(writer)
    store = Store.open(tmp_path)
    results = store.import_many([e.raw for e in feed])
    assert [not isinstance(r, Rejected) for r in results] == [True] * len(feed)
    assert store.verify().ok and store.count() == len(feed)
    exported = [e.raw for e in store.entries_after(writer.author, 0, 1000)]
    assert exported == [e.raw for e in feed]
    assert outsider_verify(exported) is None
    assert [e.signed for e in feed].count(True) == 5  # 2 v1 entries and 3 group heads


def test_the_outsider_and_the_store_refuse_an_unsigned_tail(tmp_path: Path) -> None:
    writer = FeedWriter(62)
    feed = mixed_feed(writer)
    tail = [writer.next("mint", MINT, head=False) for _ in range(2)]
    raws = [e.raw for e in feed + tail]
    assert outsider_verify(raws) == f"seq {len(raws)}: unsigned tail, no signed head"
    store = Store.open(tmp_path)
    results = store.import_many(raws)
    assert [r.status for r in results[-2:] if not isinstance(r, Rejected)] == [
        ImportStatus.PENDING
    ] * 2
    assert store.heads() == {writer.author.hex(): len(feed)}
    assert store.count() == len(feed) and store.pending() == 2


def test_a_forged_head_vouches_for_nothing(tmp_path: Path) -> None:
    """Unsigned entries in a victim's feed, closed by a head signed with another key."""
    victim = FeedWriter(63)
    store = Store.open(tmp_path)
    store.import_entry(victim.next("mint", MINT))
    forged = [victim.next("mint", {**MINT, "amount": 1000}, head=False) for _ in range(3)]
    thief = SigningKey(b"\x66" * 32)  # signs a head in the victim's feed
    last = forged[-1]
    head = forge(thief, payload_object(victim.author, 5, last.hash, 5, 0, "mint", MINT))
    raws = [e.raw for e in forged] + [head]
    genuine = store.get(victim.author, 1)
    assert genuine is not None
    assert outsider_verify([genuine.raw, *raws]) == "seq 5: signature"
    results = store.import_many(raws)
    assert isinstance(results[-1], Rejected) and results[-1].reason is RejectReason.BAD_SIGNATURE
    assert store.count() == 1 and store.heads() == {victim.author.hex(): 1}


def test_a_tampered_entry_breaks_its_group(tmp_path: Path) -> None:
    writer = FeedWriter(64)
    group = [writer.next("mint", MINT, head=i == 3) for i in range(4)]
    other = FeedWriter(64)
    tampered = [other.next("mint", {**MINT, "amount": 999}, head=False) for _ in range(2)]
    raws = [group[0].raw, tampered[1].raw, group[2].raw, group[3].raw]
    assert outsider_verify(raws) == "seq 2: chain"
    store = Store.open(tmp_path)
    results = store.import_many(raws)
    assert isinstance(results[-1], Rejected) and results[-1].reason is RejectReason.SKIPPED_SEQ
    assert store.count() == 0 and store.heads() == {}


def test_a_group_whose_head_is_missing_never_enters_the_store(tmp_path: Path) -> None:
    writer = FeedWriter(65)
    group = [writer.next("mint", MINT, head=i == 9) for i in range(10)]
    store = Store.open(tmp_path)
    told: list[Any] = []
    store.subscribe(told.append)
    first = store.import_many([e.raw for e in group[:6]])
    assert [r.status for r in first if not isinstance(r, Rejected)] == [ImportStatus.PENDING] * 6
    assert store.count() == 0 and store.heads() == {} and told == []
    store.close()
    reopened = Store.open(tmp_path)  # pending is memory only: nothing of it was stored
    assert reopened.count() == 0 and reopened.pending() == 0
    # The rest of the group, its head last, in a later batch: the whole group is stored.
    reopened.import_many([e.raw for e in group[:6]])
    reopened.subscribe(told.append)
    *_, last = reopened.import_many([e.raw for e in group[6:]])
    assert not isinstance(last, Rejected) and last.status is ImportStatus.APPENDED
    assert len(last.earlier) == 9 and [e.seq for e in told] == list(range(1, 11))
    assert reopened.heads() == {writer.author.hex(): 10} and reopened.pending() == 0
    assert reopened.verify().ok


def test_pending_is_bounded_per_feed_and_in_all(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    writer = FeedWriter(66)
    raws = [writer.next("mint", MINT, head=False).raw for _ in range(MAX_GROUP)]
    results = store.import_many(raws)
    assert all(not isinstance(r, Rejected) for r in results[:-1])
    last = results[-1]
    assert isinstance(last, Rejected) and last.reason is RejectReason.GROUP_TOO_LONG
    assert store.pending() == 0  # the over-long run is dropped whole
    feeds = MAX_PENDING_ENTRIES // (MAX_GROUP - 1) + 1
    for i in range(feeds):
        w = FeedWriter(100 + i)
        store.import_many([w.next("mint", MINT, head=False).raw for _ in range(MAX_GROUP - 1)])
        assert store.pending() <= MAX_PENDING_ENTRIES
    assert store.pending() == (feeds - 1) * (MAX_GROUP - 1)  # the first feed's run dropped
    assert store.count() == 0


def test_a_group_of_more_than_the_bound_is_a_bad_stored_row(tmp_path: Path) -> None:
    """Rows written straight into SQLite (the hostile act): 64 unsigned entries then a head."""
    writer = FeedWriter(67)
    feed = [writer.next("mint", MINT, head=i == MAX_GROUP) for i in range(MAX_GROUP + 1)]
    assert (
        outsider_verify([e.raw for e in feed]) == "seq 64: more than 63 unsigned entries in a row"
    )
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.executemany(
        "INSERT INTO entries (author, seq, hash, lamport, type, raw) VALUES (?,?,?,?,?,?)",
        [(e.author, e.seq, e.hash, e.lamport, e.type, e.raw) for e in feed],
    )
    db.commit()
    db.close()
    store = Store.open(tmp_path)
    # The first row nothing vouches for: the run's first entry (its head is too far).
    report = store.verify()
    assert (report.bad_seq, report.problem.startswith("more than 63")) == (1, True)
    assert [(b.seq, b.problem) for b in store.bad_rows()] == [(1, report.problem)]
    assert store.heads() == {}  # nothing vouched for before the bad row is served either


def test_an_unsigned_tail_stored_behind_the_store_is_quarantined(tmp_path: Path) -> None:
    key = SigningKey(b"\x44" * 32)
    store = Store.open(tmp_path)
    store.append_many(key, [("mint", MINT)] * 3)
    author = bytes(key.verify_key)
    head = store.head(author)
    assert head is not None
    writer = FeedWriter(b"\x44" * 32)
    writer.seq, writer.prev, writer.lamport = head.seq, head.hash, head.lamport
    loose = writer.next("mint", MINT, head=False)
    store.db.execute(
        "INSERT INTO entries (author, seq, hash, lamport, type, raw) VALUES (?,?,?,?,?,?)",
        (loose.author, loose.seq, loose.hash, loose.lamport, loose.type, loose.raw),
    )
    store.close()
    again = Store.open(tmp_path)
    report = again.verify()
    assert report.bad_seq == 4 and "no signed head" in report.problem
    assert again.heads() == {author.hex(): 3}


STORY_PART = {"hash": "ab" * 32, "part": 0, "parts": 1, "data": "x" * 3700}


def test_groups_are_bounded_in_bytes_too(tmp_path: Path) -> None:
    """Story parts of ~3.9 KB: a group closes before its unsigned entries pass 32 KiB, and a
    peer's run over 32 KiB is refused however few entries it holds."""
    store = Store.open(tmp_path / "a")
    key = SigningKey(b"\x46" * 32)
    out = store.append_many(key, [("story-object", STORY_PART)] * 20)
    assert [e.seq for e in out if e.signed] == [8, 16, 20]
    assert sum(len(e.raw) for e in out[:7]) <= 32768 < sum(len(e.raw) for e in out[:9])
    assert outsider_verify([e.raw for e in out]) is None
    writer = FeedWriter(73)
    run = [writer.next("story-object", STORY_PART, head=False).raw for _ in range(9)]
    other = Store.open(tmp_path / "b")
    results = other.import_many(run)
    assert [isinstance(r, Rejected) for r in results] == [False] * 8 + [True]
    last = results[-1]
    assert isinstance(last, Rejected) and last.reason is RejectReason.GROUP_TOO_LONG
    assert outsider_verify([*run, writer.next("mint", MINT).raw]) == (
        "seq 9: more than 32768 bytes of unsigned entries in a row"
    )


def test_append_many_signs_one_entry_per_group(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    key = SigningKey(b"\x45" * 32)
    store.append(key, "mint", MINT)
    out = store.append_many(key, [("mint", MINT)] * (2 * MAX_GROUP + 2))
    signed = [e.seq for e in out if e.signed]
    assert signed == [1 + MAX_GROUP, 1 + 2 * MAX_GROUP, 1 + 2 * MAX_GROUP + 2]
    assert outsider_verify([e.raw for e in store.entries_after(out[0].author, 0, 1000)]) is None


def test_a_fork_across_groups_is_proven_offline(tmp_path: Path) -> None:
    """The node's feed: seq 1 signed, then a group of three (2, 3 unsigned, 4 signed). A
    restored backup writes another group at seq 2..5. Importing it proves the fork with both
    chain segments; the proof's bytes alone convince a third party."""
    honest = FeedWriter(68)
    restored = FeedWriter(68)
    first = honest.next("mint", MINT)
    restored.next("mint", MINT)
    ours = [honest.next("mint", MINT, head=i == 2) for i in range(3)]
    theirs = [restored.next("burn", {"actor": "x", "amount": 1}, head=i == 3) for i in range(4)]
    store = Store.open(tmp_path / "a")
    store.import_many([first.raw] + [e.raw for e in ours])
    results = store.import_many([e.raw for e in theirs])
    fork = results[-1]
    assert not isinstance(fork, Rejected) and fork.status is ImportStatus.FORK
    assert fork.proof is not None and fork.proof.seq == 2
    data = fork.proof.to_bytes()
    assert json.loads(data)["v"] == 2
    proof = forkproof.from_bytes(data)  # offline: nothing but the bytes
    sides = {(proof.a.hash, len(proof.a_chain)), (proof.b.hash, len(proof.b_chain))}
    assert sides == {(ours[0].hash, 2), (theirs[0].hash, 3)}
    assert store.quarantine() == {honest.author: 2}
    other = Store.open(tmp_path / "b")
    assert other.import_fork_proof(data) and other.quarantine() == {honest.author: 2}


def test_a_fork_proof_without_a_signed_head_is_refused() -> None:
    honest, restored = FeedWriter(69), FeedWriter(69)
    honest.next("mint", MINT)
    restored.next("mint", MINT)
    a = [honest.next("mint", MINT, head=i == 1) for i in range(2)]
    b = [restored.next("burn", {"actor": "x", "amount": 1}, head=i == 1) for i in range(2)]
    good = forkproof.make(a[0], b[0], a[1:], b[1:])
    assert forkproof.from_bytes(good.to_bytes()) == good
    unsigned_only = json.loads(good.to_bytes())
    unsigned_only["a"] = unsigned_only["a"][:1]  # the head cut off: nothing vouches for a[0]
    with pytest.raises(Rejected) as exc:
        forkproof.from_bytes(_canonical(unsigned_only))
    assert exc.value.reason is RejectReason.BAD_FORK_PROOF
    with pytest.raises(Rejected):
        forkproof.make(a[0], b[0], (), b[1:])


# ---- the mesh: two real processes -------------------------------------------------------------


def _sync_from(server: MeshProc, lone: Path) -> subprocess.CompletedProcess[str]:
    """`gibsey mesh sync` of the node in `lone` from `server` (started here, stopped after)."""
    server.start()
    peer = f"{server.key}@{server.endpoint}"
    try:
        out = subprocess.run(
            [sys.executable, "-m", "gibsey", "--data", str(lone), "mesh", "sync", peer],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr + server.log()
    finally:
        server.stop()
    return out


def test_two_processes_replicate_a_v2_feed_whose_groups_span_messages(tmp_path: Path) -> None:
    """A `gibsey mesh serve` process holds a feed of one signed entry then 300 appended as
    groups of 64 (so the mesh's 256-entry messages end inside a group); `gibsey mesh sync` from
    another data directory takes all of it. Must hold: every entry arrives, verifies there
    (store and outsider), and the sync counts each entry of each group once."""
    lone = tmp_path / "lone"
    lone_key = load_or_create(lone).public_hex
    [server] = make_nodes(tmp_path / "s", ["127.0.0.1"], [free_port()], allow_extra=[lone_key])
    key = load_or_create(server.data).signing_key
    store = Store.open(server.data)
    store.append(key, "mint", MINT)
    store.append_many(key, [("mint", MINT)] * 300)
    store.close()
    out = _sync_from(server, lone)
    theirs = heads(server.data)[server.key]
    assert theirs >= 301 and heads(lone) == {server.key: theirs}
    assert f"received {theirs} entries" in out.stdout, out.stdout
    got = Store.open(lone)
    try:
        assert got.verify().ok and got.pending() == 0
        feed = got.entries_after(bytes.fromhex(server.key), 0, 10_000)
    finally:
        got.close()
    assert len(feed) == theirs and outsider_verify([e.raw for e in feed]) is None
    assert sum(e.signed for e in feed) < theirs // 32  # groups, not one signature per entry


def test_a_fork_inside_a_group_reaches_a_peer_as_a_checkable_proof(tmp_path: Path) -> None:
    """The served node's feed is seq 1, then a group of three (2, 3 unsigned, 4 signed); the
    syncing node holds another seq 2 of that feed (signed), from a restored backup. Must hold:
    the server sends its seq 2 with the rest of its group (alone, an unsigned entry would wait
    for a head forever), and the syncing node stores a fork proof at seq 2 that verifies from
    its bytes alone."""
    lone = tmp_path / "lone"
    lone_key = load_or_create(lone).public_hex
    [server] = make_nodes(tmp_path / "s", ["127.0.0.1"], [free_port()], allow_extra=[lone_key])
    seed = bytes(load_or_create(server.data).signing_key)
    honest, restored = FeedWriter(seed), FeedWriter(seed)
    first = honest.next("mint", MINT)
    restored.next("mint", MINT)
    group = [honest.next("mint", MINT, head=i == 2) for i in range(3)]
    other = restored.next("burn", {"actor": "london-fox", "amount": 1})
    for data, feed in ((server.data, [first, *group]), (lone, [first, other])):
        store = Store.open(data)
        store.import_many([e.raw for e in feed])
        store.close()
    _sync_from(server, lone)
    store = Store.open(lone)
    try:
        [proof] = store.fork_proofs()
    finally:
        store.close()
    assert proof.seq == 2 and json.loads(proof.to_bytes())["v"] == 2
    assert forkproof.from_bytes(proof.to_bytes()) == proof
    assert {proof.a.hash, proof.b.hash} == {group[0].hash, other.hash}


def test_a_v1_entry_is_the_head_of_the_unsigned_v2_entries_before_it(tmp_path: Path) -> None:
    """No release writes it, but the document says it: a group's head is its first signed entry,
    whatever its `v`. A v1 entry signs `prev` like a v2 head, so it vouches for the unsigned v2
    entries before it - in an import, a stored feed's verify, an outsider's check and a fork
    proof's segment alike."""
    writer, other = FeedWriter(74), FeedWriter(74)
    feed = [writer.next("mint", MINT), writer.next("mint", MINT, head=False)]
    feed += [writer.next("mint", MINT, head=False), writer.next("mint", MINT, version=1)]
    store = Store.open(tmp_path)
    results = store.import_many([e.raw for e in feed])
    statuses = [r if isinstance(r, Rejected) else r.status for r in results]
    appended, pending = ImportStatus.APPENDED, ImportStatus.PENDING
    assert statuses == [appended, pending, pending, appended]  # the v1 head stores its run
    assert store.verify().ok and store.count() == 4
    served = Store.open(tmp_path).entries_after(writer.author, 0, 10)  # the read path's checks
    assert [e.raw for e in served] == [e.raw for e in feed]
    assert outsider_verify([e.raw for e in feed]) is None
    other.next("mint", MINT)
    theirs = other.next("burn", {"actor": "x", "amount": 1})
    proof = forkproof.make(feed[1], theirs, feed[2:], [])
    assert forkproof.from_bytes(proof.to_bytes()).seq == 2


def _outsider_check_heads(lines: list[bytes], heads: str) -> str | None:
    """An outsider's check of an export against its heads file (CANONICAL.md section 5):
    every feed the heads name is there, ends at that seq on that hash, and no other is."""
    feeds: dict[str, list[bytes]] = {}
    for line in lines:
        entry = _entry(line)
        feeds.setdefault(_split(entry)[2]["author"], []).append(entry)
    named = [row.split("\t") for row in heads.splitlines()]
    if sorted(a for a, _, _ in named) != sorted(feeds):
        return "the feeds differ from the heads"
    for author, seq, hash_hex in named:
        last = feeds[author][-1]
        if len(feeds[author]) != int(seq) or hashlib.sha256(last).hexdigest() != hash_hex:
            return f"{author[:16]} does not end at seq {seq}"
    return None


def test_an_export_s_heads_show_a_feed_cut_short_at_a_group_head(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Cut at a group's head, an export reads as a valid earlier one; left out, a feed is not
    seen at all. `export --heads FILE` says where each feed printed ends, from the same read."""
    from gibsey.cli import main

    first, second = FeedWriter(75), FeedWriter(76)
    store = Store.open(tmp_path)
    store.import_many([e.raw for e in mixed_feed(first) + mixed_feed(second)])
    store.close()
    heads = tmp_path / "heads.tsv"
    assert main(["--data", str(tmp_path), "ledger", "export", "--heads", str(heads)]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert len(lines) == 2 * len(first.entries)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("heads")) == [heads.name]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    text = heads.read_text()
    assert _outsider_check_heads(lines, text) is None
    cut = len(first.entries) - MAX_GROUP  # the first feed without its last group
    by_first = [line for line in lines if first.author.hex().encode() in line]
    others = [line for line in lines if line not in by_first]
    assert outsider_verify([_entry(line) for line in by_first[:cut]]) is None  # looks whole
    cut_short = _outsider_check_heads(by_first[:cut] + others, text)
    assert cut_short == f"{first.author.hex()[:16]} does not end at seq {len(first.entries)}"
    assert _outsider_check_heads(by_first, text) == "the feeds differ from the heads"


def _entry(line: bytes) -> bytes:
    payload, _, sig = line.rpartition(b"\t")
    return payload + bytes.fromhex(sig.decode())
