"""`gibsey ledger export` keeps standard output for the data (CANONICAL.md section 5).

What it prints is read by a verifier elsewhere (`export > feed.txt`, `export --proofs >
proofs.txt`), so a refusal - a stored fork proof that does not hold - is said on standard
error with exit status 1, never written among the lines a verifier would read; and one bad
proof costs the verifier only itself, never the good proofs beside it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from gibsey import cli
from gibsey.ledger.store import DB_FILENAME, Store
from tests.test_ledger_store import ledger_with_a_fork

DAMAGED = b'{"a":"00","b":"01"}'  # a proof's row whose bytes no longer hold


def _damage(data: Path, author: bytes, seq: int) -> None:
    db = sqlite3.connect(data / DB_FILENAME)
    db.execute("INSERT INTO forks VALUES (?, ?, ?)", (author, seq, DAMAGED))
    db.commit()
    db.close()


def test_a_refused_proofs_export_writes_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert cli.main(["--data", d, "ledger", "mint", "london-fox", "10"]) == 0
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    author = db.execute("SELECT author FROM entries").fetchone()[0]
    db.close()
    _damage(tmp_path, author, 1)
    capsys.readouterr()
    rc = cli.main(["--data", d, "ledger", "export", "--proofs"])
    got = capsys.readouterr()
    assert rc == 1
    assert got.out == ""
    assert f"refused: the fork proof held for {author.hex()} seq 1: fork proof:" in got.err


def test_one_bad_proof_costs_the_export_only_itself(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A node holds a good proof against one author and a damaged row against another: the
    export prints the good one (a verifier folds as the node does), names the bad one by author
    and seq on standard error, and exits 1; the mesh's own list still serves the good one."""
    honest, proof = ledger_with_a_fork(tmp_path)
    stranger = b"\x07" * 32
    _damage(tmp_path, stranger, 5)
    rc = cli.main(["--data", str(tmp_path), "ledger", "export", "--proofs"])
    got = capsysbinary.readouterr()
    assert rc == 1
    assert got.out.splitlines() == [proof.to_bytes()]
    assert f"fork proof held for {stranger.hex()} seq 5".encode() in got.err
    assert proof.author.hex().encode() not in got.err
    store = Store.open(tmp_path)
    assert [p.to_bytes() for p in store.fork_proofs()] == [proof.to_bytes()]
    assert [(b.author, b.seq) for b in store.verify().bad_rows] == [(stranger, 5)]
    store.close()
    only_good = ["--data", str(tmp_path), "ledger", "export", "--proofs", "--author"]
    assert cli.main([*only_good, honest.author.hex()[:8]]) == 0
    assert capsysbinary.readouterr().out.splitlines() == [proof.to_bytes()]


def test_an_export_whose_heads_cannot_be_written_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The heads file is checked before the first line: an export never ends without the
    heads it was asked for after printing every line."""
    d = str(tmp_path)
    assert cli.main(["--data", d, "ledger", "mint", "london-fox", "10"]) == 0
    capsys.readouterr()
    heads = tmp_path / "no-such-dir" / "heads.tsv"
    rc = cli.main(["--data", d, "ledger", "export", "--heads", str(heads)])
    got = capsys.readouterr()
    assert (rc, got.out) == (1, "")
    assert f"cannot write --heads {heads}: No such file or directory" in got.err


def test_heads_never_replace_a_device_and_an_author_is_hex(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried (an outside tester, as root): `export --heads /dev/full` renamed its file over the
    device (any special file, /dev/stdout too); `export --author zz` printed nothing, exit 0.
    Must hold: a --heads path that is there and no regular file is refused before any line,
    and left as it was; an --author that is no hex is refused (exit 2)."""
    d = str(tmp_path)
    assert cli.main(["--data", d, "ledger", "mint", "london-fox", "10"]) == 0
    capsys.readouterr()
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    for special in (fifo, tmp_path):
        rc = cli.main(["--data", d, "ledger", "export", "--heads", str(special)])
        got = capsys.readouterr()
        assert (rc, got.out) == (1, "")
        assert f"cannot write --heads {special}: it is no regular file" in got.err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert cli.main(["--data", d, "ledger", "export", "--author", "zz"]) == 2
    assert "--author 'zz': the start of a key in hex" in capsys.readouterr().err
