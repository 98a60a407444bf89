"""One bad stored row (issue 16, item 10): a ledger entry damaged on disk, or stored under an
older release's rules.

What is tried: a node's real data directory (its identity and `ledger.sqlite3`) holds a feed of
four entries; then one row is rewritten straight in the SQLite file - the hostile act: its body
breaks today's rules (a self-gift, or an actor an older release took, "london-fox\\n", signed by
the node's key), or its `lamport` or `type` column disagrees with the signed entry, or the entry
is signed by a key that is not its author's. Then the real commands run as processes (`gibsey
ledger ...`, `gibsey doctor`, `gibsey mesh serve` and `gibsey mesh sync`), and a real node starts
on the data directory with a real Mosquitto.

What must hold: the bad row is quarantined and named (by `ledger verify`, `doctor`, a
`safety/alert`, and a warning on the read commands); every read command answers without a
traceback and exits 0; views fold only the entries before the bad row (nothing that was not
checked); the mesh still serves those entries to a peer, and a peer that holds the good entry
at that seq is neither struck nor turned into a fork proof. Amounts are ASCII digits.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gibsey.core.identity import load_or_create
from gibsey.core.topics import topic_for
from gibsey.ledger import bodies
from gibsey.ledger.entry import Entry
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import DB_FILENAME, Store
from gibsey.ledger.testing import forge
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from tests.brokers import Mosquitto, free_port
from tests.conftest import CollectorFactory, started
from tests.mesh_support import fork_count, heads, make_nodes

REPO = Path(__file__).resolve().parents[2]
UNKNOWN = SigningKey(b"\x0d" * 32)  # a key that is nobody's in this gallery

Damage = Callable[[Path, list[Entry]], None]


# ---- a node's data directory and the hostile act ---------------------------------------------


def feed(data: Path) -> list[Entry]:
    """The node's own feed: mint 10, mint 5, a gift of 3, mint 7 (minted 22 in all)."""
    ledger = Ledger.open(data)
    try:
        return [
            ledger.mint("london-fox", 10, "read"),
            ledger.mint("glyph-marrow", 5, "read"),
            ledger.gift("london-fox", "glyph-marrow", 3),
            ledger.mint("old-natalie", 7, "dream"),
        ]
    finally:
        ledger.close()


def payload_of(e: Entry, **changes: Any) -> dict[str, Any]:
    obj = {
        "author": e.author.hex(),
        "body": e.body,
        "lamport": e.lamport,
        "prev": e.prev.hex() if e.prev else None,
        "seq": e.seq,
        "type": e.type,
        "v": 1,
        "wall": e.wall,
    }
    obj.update(changes)
    return obj


def sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def write_row(data: Path, sql: str, args: tuple[Any, ...]) -> None:
    """The hostile act: one statement straight into the node's SQLite file."""
    db = sqlite3.connect(data / DB_FILENAME)
    try:
        db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def self_gift(data: Path, es: list[Entry]) -> None:
    """Seq 3 becomes a self-gift, correctly signed by the node's own key (older rules)."""
    key = load_or_create(data).signing_key
    body = {"from": "london-fox", "to": "london-fox", "amount": 3}
    raw = forge(key, payload_of(es[2], body=body))
    write_row(data, "UPDATE entries SET raw = ?, hash = ? WHERE seq = 3", (raw, sha256(raw)))


def newline_actor(data: Path, es: list[Entry]) -> None:
    """Seq 3 becomes a mint to "london-fox\\n", signed by the node's key: what an older release
    accepted (its actor pattern's `$` matched before a final newline), no longer an actor."""
    key = load_or_create(data).signing_key
    body = {"actor": "london-fox\n", "amount": 3, "ritual": "read"}
    raw = forge(key, payload_of(es[2], type="mint", body=body))
    sql = "UPDATE entries SET raw = ?, hash = ?, type = 'mint' WHERE seq = 3"
    write_row(data, sql, (raw, sha256(raw)))


def unknown_signer(data: Path, es: list[Entry]) -> None:
    """Seq 3 becomes a mint of 1000 to mallory, in the node's feed, signed by another key."""
    body = {"actor": "mallory", "amount": 1000, "ritual": "read"}
    raw = forge(UNKNOWN, payload_of(es[2], type="mint", body=body))
    write_row(data, "UPDATE entries SET raw = ?, type = 'mint' WHERE seq = 3", (raw,))


def lamport_column(data: Path, es: list[Entry]) -> None:
    """Seq 3's lamport column says 999; the signed entry says 3."""
    write_row(data, "UPDATE entries SET lamport = 999 WHERE seq = 3", ())


def type_column(data: Path, es: list[Entry]) -> None:
    """Seq 3's type column says burn; the signed entry is a gift."""
    write_row(data, "UPDATE entries SET type = 'burn' WHERE seq = 3", ())


def raw_as_text(data: Path, es: list[Entry]) -> None:
    """Seq 3's entry bytes stored as TEXT, not a BLOB (the commands died with a TypeError)."""
    write_row(data, "UPDATE entries SET raw = CAST(raw AS TEXT) WHERE seq = 3", ())


def hash_as_text(data: Path, es: list[Entry]) -> None:
    """Seq 3's hash column holds text that is no UTF-8 (reading the table raised an error)."""
    write_row(data, "UPDATE entries SET hash = CAST(hash AS TEXT) WHERE seq = 3", ())


DAMAGE: dict[str, Damage] = {
    "raw-as-text": raw_as_text,
    "hash-as-text": hash_as_text,
    "self-gift": self_gift,
    "newline-actor": newline_actor,
    "unknown-signer": unknown_signer,
    "lamport-column": lamport_column,
    "type-column": type_column,
}


def gibsey(data: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gibsey", *args, "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout_s,
        check=False,
    )


def damaged(tmp_path: Path, how: str) -> Path:
    data = tmp_path / "node"
    es = feed(data)
    DAMAGE[how](data, es)
    return data


# ---- the read commands, verify, export, doctor -----------------------------------------------


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_read_commands_answer_and_fold_only_what_precedes_the_bad_row(
    tmp_path: Path, how: str
) -> None:
    """Tried: `ledger balance`, `show`, `hearings`, `export`, `story rebuild` on a feed whose
    seq 3 is bad. Must hold: each exits 0 without a traceback, the ledger ones say which row
    they set aside, and they fold only seq 1-2 (minted 15: the gift, the bad row and the mint
    after it count for nothing; mallory's forged 1000 never appears)."""
    data = damaged(tmp_path, how)
    for cmd in (("balance",), ("show",), ("hearings",)):
        out = gibsey(data, "ledger", *cmd)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        assert "quarantined" in out.stdout + out.stderr and "seq 3" in out.stdout + out.stderr
    story = gibsey(data, "story", "rebuild")  # the story graph, another view of the ledger
    assert story.returncode == 0 and "rebuilt" in story.stdout, story.stdout + story.stderr
    balance = gibsey(data, "ledger", "balance")
    assert "minted 15, burned 0, supply 15" in balance.stdout, balance.stdout
    assert "mallory" not in balance.stdout
    export = gibsey(data, "ledger", "export")
    assert export.returncode == 0, export.stdout + export.stderr
    lines = export.stdout.splitlines()
    assert [re.search(r'"seq":(\d+)', line)[1] for line in lines] == ["1", "2"]  # type: ignore[index]


@pytest.mark.parametrize("seq", [0, -5])
def test_a_seq_column_below_one_is_checked_as_the_others_are(tmp_path: Path, seq: int) -> None:
    """Tried (an outside verifier): the last row's seq column set to 0 (or below). Only
    `verify` saw it; balance and export counted and printed the row, unchecked (the views'
    check read from seq 1). Must hold: the row is checked as every other is, and set aside with
    its feed from there on (it sorts first: the whole feed), said by the read commands."""
    data = tmp_path / "node"
    feed(data)
    write_row(data, "UPDATE entries SET seq = ? WHERE seq = 4", (seq,))
    balance = gibsey(data, "ledger", "balance")
    assert balance.returncode == 0, balance.stdout + balance.stderr
    said = balance.stdout + balance.stderr
    assert f"seq {seq}" in said and "index columns disagree" in said, said
    assert "minted 0, burned 0, supply 0" in balance.stdout, balance.stdout
    export = gibsey(data, "ledger", "export")
    assert export.returncode == 0 and export.stdout == "", export.stdout + export.stderr


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_verify_and_doctor_name_the_bad_row(tmp_path: Path, how: str) -> None:
    """Tried: `ledger verify` and `doctor` on the same damage (the type column included, which
    verify did not compare). Must hold: verify exits 1 naming the feed, seq 3 and the problem;
    doctor has a FAIL line for the ledger naming seq 3."""
    data = damaged(tmp_path, how)
    me = load_or_create(data).public_hex
    out = gibsey(data, "ledger", "verify")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"feed {me} seq 3" in out.stdout, out.stdout
    doctor = gibsey(data, "doctor").stdout
    lines = [line for line in doctor.splitlines() if line[6:].startswith("ledger")]
    assert lines and lines[0].startswith("FAIL") and "seq 3" in lines[0], doctor


def test_a_clean_ledger_verifies_and_exports_every_entry(tmp_path: Path) -> None:
    """Tried: export an undamaged feed and check each line the way CANONICAL.md says an
    outsider should (payload bytes, a tab, the signature in hex). Must hold: every entry, in
    feed order, each line's bytes are exactly the stored entry."""
    data = tmp_path / "node"
    es = feed(data)
    assert gibsey(data, "ledger", "verify").returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "gibsey", "ledger", "export", "--data", str(data)],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=True,
    ).stdout
    raws = []
    for line in out.splitlines():
        payload, _, sig = line.rpartition(b"\t")
        raws.append(payload + bytes.fromhex(sig.decode()))
    assert raws == [e.raw for e in es]


@pytest.mark.parametrize("amount", ["１０", "1_0", "+10", " 10"])
def test_amounts_are_ascii_digits(tmp_path: Path, amount: str) -> None:
    """Tried: `ledger mint` and `ledger gift` with full-width digits, an underscore, a sign, a
    space (Python's int() takes them all as 10). Must hold: refused with a usage error naming
    the rule, nothing appended."""
    data = tmp_path / "node"
    assert gibsey(data, "ledger", "mint", "london-fox", "20").returncode == 0
    for cmd in (("mint", "london-fox", amount), ("gift", "london-fox", "glyph-marrow", amount)):
        out = gibsey(data, "ledger", *cmd)
        assert out.returncode == 2 and "ASCII digits" in out.stderr, out.stdout + out.stderr
    assert "ok: 1 entries" in gibsey(data, "ledger", "verify").stdout


def test_canonical_md_lists_every_type_and_field() -> None:
    """Tried: read CANONICAL.md as an outsider writing a verifier would. Must hold: every entry
    type and every body field the code accepts is in it, and where the feed is stored."""
    doc = (REPO / "ledger" / "CANONICAL.md").read_text()
    for type_, shape in bodies.SHAPES.items():
        assert f"`{type_}`" in doc, type_
        for name in [*shape.required, *shape.optional]:
            assert f"`{name}`" in doc, (type_, name)
    for needle in ("ledger.sqlite3", "`entries`", "gibsey ledger export", "self-gift"):
        assert needle in doc, needle


# ---- the mesh --------------------------------------------------------------------------------


def sync(lone: Path, key: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    return gibsey(lone, "mesh", "sync", f"{key}@{endpoint}", "--timeout", "10")


def test_mesh_serves_the_entries_before_a_bad_row(tmp_path: Path) -> None:
    """Tried: `gibsey mesh serve` on a node whose own seq 3 breaks the body rules; a peer runs
    `gibsey mesh sync` against it. Must hold: the sync completes and the peer gets seq 1-2 (which
    verify there), and nothing after the bad row."""
    lone = tmp_path / "lone"
    lone_key = load_or_create(lone).public_hex
    [server] = make_nodes(tmp_path / "s", ["127.0.0.1"], [free_port()], allow_extra=[lone_key])
    es = feed(server.data)
    self_gift(server.data, es)
    server.start()
    try:
        out = sync(lone, server.key, server.endpoint)
        assert out.returncode == 0, out.stdout + out.stderr + server.log()
        assert "received 2 entries" in out.stdout, out.stdout
    finally:
        server.stop()
    assert heads(lone) == {server.key: 2}
    assert gibsey(lone, "ledger", "verify").returncode == 0


def test_a_peer_with_the_good_entry_is_not_struck_nor_forked(tmp_path: Path) -> None:
    """Tried: a peer already holds the node's genuine feed (seq 1-4); then the node's seq 3 is
    replaced by an entry signed by an unknown key, and the peer syncs with it. Must hold: the
    node takes the peer's seq 3-4 for no fork proof (the damaged row proves nothing against
    its author), does not strike the peer, keeps seq 1-2 serving; the peer loses nothing."""
    lone = tmp_path / "lone"
    lone_key = load_or_create(lone).public_hex
    [server] = make_nodes(tmp_path / "s", ["127.0.0.1"], [free_port()], allow_extra=[lone_key])
    es = feed(server.data)
    peer_store = Store.open(lone)
    try:
        peer_store.import_many([e.raw for e in es])
    finally:
        peer_store.close()
    unknown_signer(server.data, es)
    server.start()
    try:
        out = sync(lone, server.key, server.endpoint)
        assert out.returncode == 0, out.stdout + out.stderr + server.log()
    finally:
        server.stop()
    assert fork_count(server.data) == 0 and fork_count(lone) == 0
    assert "strike" not in server.log(), server.log()
    assert heads(lone) == {server.key: 4}
    assert gibsey(lone, "ledger", "verify").returncode == 0
    verify = gibsey(server.data, "ledger", "verify")
    assert "seq 3" in verify.stdout and "fork" not in verify.stdout, verify.stdout


# ---- a running node ----------------------------------------------------------------------------


async def test_a_node_on_a_damaged_ledger_alerts_and_serves(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: `gibsey up` (in-process, real Mosquitto) on a data directory whose seq 3 was
    signed by an unknown key. Must hold: a `safety/alert` `ledger_bad_row` naming seq 3, and the
    node's view holds seq 1-2 only (mallory's forged mint counts for nothing)."""
    data = damaged(tmp_path, "unknown-signer")
    node = Node(data, GibseyConfig())
    col = await collector_factory(mosquitto.port, topic_for(node.node_id, "safety/alert"))
    async with started(node, mosquitto.url):
        alerts = await col.wait_for(
            lambda c: [
                a for a in c.of_kind("safety/alert") if a["payload"]["reason"] == "ledger_bad_row"
            ]
        )
        assert "seq 3" in alerts[0]["payload"]["detail"]
        assert node.parts.ledger is not None
        econ = node.parts.ledger.view().economy
        assert econ.minted == 15 and econ.balance("mallory") == 0
