"""`gibsey story ...` through the real argument parser, with the event hook in place of MQTT."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from gibsey import cli
from gibsey.ledger.ledger import Ledger
from gibsey.node.story import cli as story_cli
from gibsey.node.story.testing import write_corpus


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(story_cli, "console", Console(width=200, highlight=False))


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    story_cli.set_publish_hook(lambda kind, payload: got.append((kind, payload)))
    yield got
    story_cli.set_publish_hook(None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit code and what the command said: its answer (stdout), then its errors and
    warnings (stderr)."""
    rc = cli.main(list(argv))
    said = capsys.readouterr()
    return rc, said.out + said.err


def test_story_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], events: list[tuple[str, dict[str, Any]]]
) -> None:
    d = str(tmp_path / "node")
    rc, out = run(capsys, "--data", d, "story", "import", "--sample", "--actor", "an-author")
    assert rc == 0 and "imported 48 pages into main" in out
    rc, out = run(capsys, "story", "--data", d, "branch", "fox", "--actor", "london-fox")
    assert rc == 0 and "branch fox" in out
    page = tmp_path / "page.md"
    page.write_text("# London Fox Counts the Exits\n\nShe counted them three times.\n")
    rc, out = run(
        capsys,
        "story",
        "write",
        "--data",
        d,
        "fox",
        "004",
        "--file",
        str(page),
        "--actor",
        "london-fox",
    )
    assert rc == 0 and "page 004 version" in out
    rc, out = run(capsys, "--data", d, "story", "diff", "main", "fox")
    assert rc == 0 and "page 004" in out and "three times" in out
    rc, out = run(capsys, "--data", d, "story", "branch")
    assert rc == 0 and "fox" in out and "main" in out
    rc, out = run(capsys, "--data", d, "story", "show", "fox", "004")
    assert rc == 0 and "She counted them three times." in out
    rc, out = run(capsys, "--data", d, "story", "log", "fox")
    assert rc == 0 and "write 004" in out and "london-fox" in out
    assert run(capsys, "--data", d, "ledger", "mint", "london-fox", "100")[0] == 0
    rc, out = run(capsys, "--data", d, "story", "propose", "fox", "--actor", "london-fox")
    assert rc == 0 and "hearing" in out
    hearing = out.split("hearing ")[1].split()[0]
    assert run(capsys, "--data", d, "ledger", "vote", hearing, "yes", "--as", "london-fox")[0] == 0
    rc, out = run(capsys, "--data", d, "story", "apply")
    assert rc == 0 and "executed: fox merged into main" in out
    rc, out = run(capsys, "--data", d, "story", "show", "main", "004")
    assert "She counted them three times." in out
    assert [(k, p["change"], p["branch"]) for k, p in events] == [
        ("narrative/change", "branch", "main"),
        ("narrative/change", "branch", "fox"),
        ("narrative/change", "write", "fox"),
        ("narrative/change", "propose", "fox"),
        ("narrative/change", "merge", "main"),
    ]
    rc, out = run(capsys, "--data", d, "story", "rebuild")
    assert rc == 0 and "rebuilt" in out


def test_bad_input_is_an_error_and_changes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    events: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = tmp_path / "node"
    root = write_corpus(tmp_path / "corpus", pages=30, words=10)
    records = json.loads((root / "metadata" / "pages.json").read_text())
    records[12]["pageIndex"] = "twelve"
    (root / "metadata" / "pages.json").write_text(json.dumps(records))
    rc, out = run(capsys, "--data", str(d), "story", "import", str(root))
    assert rc == 1
    assert "pages.json: record 12 (id 013): field 'pageIndex' must be int" in out
    rc, out = run(capsys, "--data", str(d), "story", "write", "main", "004", "--text", "x")
    assert rc == 1 and "error" in out
    rc, out = run(capsys, "--data", str(d), "story", "import", "--sample")
    assert rc == 0
    rc, out = run(capsys, "--data", str(d), "story", "branch", "fox")
    rc, out = run(capsys, "--data", str(d), "story", "write", "fox", "nope", "--text", "x")
    assert rc == 1 and "no page 'nope' on fox" in out
    # Tried (an outside tester): `story write x 005 < /dev/null` (cron, nohup) emptied page 005.
    with monkeypatch.context() as m:
        m.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
        rc, out = run(capsys, "--data", str(d), "story", "write", "fox", "005")
    assert rc == 1 and "no text on standard input: nothing was written" in out, out
    ledger = Ledger.open(d)
    try:
        assert {e.type for e in ledger.store.iter_ordered()} == {"story-object", "story-ref"}
        refs = [e for e in ledger.store.iter_ordered() if e.type == "story-ref"]
        assert len(refs) == 2  # the import and the branch: nothing from the failures
    finally:
        ledger.close()
    assert len(events) == 2
