"""`gibsey ledger export` keeps standard output for the data (CANONICAL.md section 5).

What it prints is read by a verifier elsewhere (`export > feed.txt`, `export --proofs >
proofs.txt`), so a refusal - a stored fork proof that does not hold - is said on standard
error with exit status 1, never written among the lines a verifier would read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gibsey import cli
from gibsey.ledger.store import DB_FILENAME


def test_a_refused_proofs_export_writes_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert cli.main(["--data", d, "ledger", "mint", "london-fox", "10"]) == 0
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    author = db.execute("SELECT author FROM entries").fetchone()[0]
    db.execute("INSERT INTO forks VALUES (?, ?, ?)", (author, 1, b'{"a":"00","b":"01"}'))
    db.commit()
    db.close()
    capsys.readouterr()
    rc = cli.main(["--data", d, "ledger", "export", "--proofs"])
    got = capsys.readouterr()
    assert rc == 1
    assert got.out == ""
    assert "refused" in got.err
