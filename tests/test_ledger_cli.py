"""`gibsey ledger ...` end to end through the real argument parser."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from gibsey import cli
from gibsey.ledger import cli as ledger_cli


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough that cells are not wrapped mid-word in the captured output."""
    monkeypatch.setattr(ledger_cli, "console", Console(width=200, highlight=False))


@pytest.fixture
def events() -> Any:
    got: list[tuple[str, dict[str, Any]]] = []
    ledger_cli.set_publish_hook(lambda event, payload: got.append((event, payload)))
    yield got
    ledger_cli.set_publish_hook(None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().out


def test_gift_flow_and_publish_hook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], events: list[tuple[str, dict[str, Any]]]
) -> None:
    d = str(tmp_path)
    assert run(capsys, "--data", d, "ledger", "mint", "london-fox", "100")[0] == 0
    rc, out = run(capsys, "ledger", "--data", d, "gift", "london-fox", "glyph-marrow", "40")
    assert rc == 0 and "gift appended: seq 2" in out
    rc = cli.main(["ledger", "gift", "--data", d, "glyph-marrow", "old-natalie", "41"])
    said = capsys.readouterr()  # a refusal is an error: on stderr, nothing on stdout
    assert rc == 1 and said.out == "" and "refused: glyph-marrow has 40" in said.err
    rc, out = run(capsys, "ledger", "balance", "--data", d)
    assert rc == 0 and "london-fox" in out and "60" in out and "supply 100" in out
    assert [e for e, _ in events] == ["gift/txn", "gift/txn", "gift/balance"]
    assert events[1][1]["body"] == {"from": "london-fox", "to": "glyph-marrow", "amount": 40}
    assert events[1][1]["applied"] is True
    rc, out = run(capsys, "ledger", "show", "--data", d, "--type", "gift")
    assert rc == 0 and "glyph-marrow" in out and "mint" not in out.split("effect", 1)[1]
    rc, out = run(capsys, "ledger", "verify", "--data", d)
    assert rc == 0 and "ok: 2 entries in 1 feeds" in out


def test_hearing_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    run(capsys, "ledger", "mint", "--data", d, "alice", "100")
    target = tmp_path / "table.json"
    target.write_text("{}")
    rc, out = run(
        capsys,
        "ledger",
        "propose",
        "--data",
        d,
        "opcode-table-change",
        "--file",
        str(target),
        "--title",
        "new table",
        "--by",
        "alice",
    )
    assert rc == 0 and "hearing opened" in out
    phash = out.split("hearing opened: ")[1].split()[0]
    rc, out = run(capsys, "ledger", "vote", "--data", d, phash[:8], "yes", "--as", "alice")
    assert rc == 0 and "decided: passed" in out
    rc, out = run(capsys, "ledger", "hearings", "--data", d)
    assert rc == 0 and "passed" in out and "awaiting executor" in out


def test_verify_reports_corruption(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    for _ in range(3):
        run(capsys, "ledger", "mint", "--data", d, "alice", "5")
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    raw = db.execute("SELECT raw FROM entries WHERE seq = 2").fetchone()[0]
    db.execute(
        "UPDATE entries SET raw = ? WHERE seq = 2", (raw.replace(b'"amount":5', b'"amount":6'),)
    )
    db.commit()
    rc, out = run(capsys, "ledger", "verify", "--data", d)
    assert rc == 1 and "BAD" in out and "seq 2" in out and "bad-signature" in out


def test_show_limit_keeps_the_last_n_and_refuses_a_negative_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ledger show --limit N` shows the last N in fold order (kept as they come, not the whole
    ledger first); a negative N is a usage error (before: `--limit -1` showed all but the first)."""
    d = str(tmp_path)
    for amount in ("1", "2", "3"):
        assert run(capsys, "--data", d, "ledger", "mint", "ada", amount)[0] == 0
    rc, out = run(capsys, "ledger", "show", "--data", d, "--limit", "2")
    assert rc == 0 and "(2 shown" in out and "ada +2" in out and "ada +3" in out, out
    assert "ada +1" not in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ledger", "show", "--data", d, "--limit", "-1"])
    assert exit_.value.code == 2
    assert "-1 is negative" in capsys.readouterr().err
