"""A node whose ledger was wiped (or replaced by an older copy) while node.key stayed must not
sign its feed again from where the copy stops: its peers hold the entries it would sign over,
and a forked feed counts nowhere (ledger/ownfeed.py).

Tried from outside: `truncate -s 0 ledger.sqlite3` (and `rm ledger.sqlite3*`) on a node with 62
entries; `ledger verify` said ok, and the next `ledger mint` re-signed seq 1."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gibsey.ledger.ledger import Ledger
from gibsey.ledger.ownfeed import FILENAME
from gibsey.ledger.store import DB_FILENAME, Store
from tests.test_cli_output import gibsey


def _wipe(data: Path) -> None:
    for f in data.iterdir():
        if f.name.startswith(DB_FILENAME):
            f.unlink()


def _mint(data: Path, actor: str) -> subprocess.CompletedProcess[str]:
    done = gibsey(data, "ledger", "mint", actor, "1")  # no broker there: nothing announced
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def test_a_wiped_ledger_is_not_signed_on_until_its_feed_is_back(tmp_path: Path) -> None:
    data = tmp_path / "node"
    for actor in ("ada", "bob", "cy"):
        assert _mint(data, actor).returncode == 0
    first = Ledger.open(data)
    signed = [e.raw for e in first.store.iter_ordered()]
    first.close()
    assert len(signed) == 3 and (data / FILENAME).exists()

    _wipe(data)  # node.key and the mark stay
    refused = _mint(data, "dee")
    assert refused.returncode == 1
    assert "signed its feed up to seq 3" in refused.stderr
    assert "holds it to seq 0 only" in refused.stderr
    again = Ledger.open(data)
    assert again.store.heads() == {}  # nothing signed over the lost entries

    for raw in signed:  # the feed brought back, as the mesh imports it from a peer
        again.import_entry(raw)
    again.close()
    done = _mint(data, "dee")
    assert done.returncode == 0, done.stdout
    assert "seq 4" in done.stdout


def test_an_older_copy_of_the_ledger_is_not_signed_on(tmp_path: Path) -> None:
    """A backup of seq 1 restored after seq 2 and 3 were signed (the mark written as the CLI's
    ledger closed): refused at seq 1 < 3, not a second seq 2."""
    data = tmp_path / "node"
    assert _mint(data, "ada").returncode == 0
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in data.iterdir():
        if f.name.startswith(DB_FILENAME):
            (backup / f.name).write_bytes(f.read_bytes())
    assert _mint(data, "bob").returncode == 0 and _mint(data, "cy").returncode == 0
    _wipe(data)
    for f in backup.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    refused = _mint(data, "dee")
    assert refused.returncode == 1
    assert "signed its feed up to seq 3" in refused.stderr and "to seq 1 only" in refused.stderr


def test_a_new_node_and_a_damaged_mark_sign_as_ever(tmp_path: Path) -> None:
    data = tmp_path / "node"
    assert _mint(data, "ada").returncode == 0  # no mark yet: a new node signs seq 1
    (data / FILENAME).write_text("{not json")
    done = _mint(data, "bob")  # the check is lost, the feed is not
    assert done.returncode == 0 and "seq 2" in done.stdout


def test_a_damaged_mark_is_said_once_and_written_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside tester's power-cut sweep: the node said "own-feed.json is
    unreadable" twice, as the ledger opened and again as it wrote the new mark."""
    ledger = Ledger(Store.open(tmp_path), SigningKey(b"\x02" * 32))
    ledger.mint("ada", 1, "read")
    ledger.close()
    (tmp_path / FILENAME).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="gibsey.ledger"):
        ledger = Ledger(Store.open(tmp_path), SigningKey(b"\x02" * 32))
        ledger.mint("bob", 1, "read")  # the first signature writes the mark at once
        ledger.close()
    assert caplog.text.count("is unreadable") == 1, caplog.text
    assert json.loads((tmp_path / FILENAME).read_text())  # a whole mark again
