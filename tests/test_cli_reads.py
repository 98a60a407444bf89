"""Read commands on a directory that holds no node: the real `gibsey` parser and commands.

Tried from outside: `gibsey ledger verify --data /mnt/gibsy` (a typo), or a read with
GIBSEY_DATA unset on a machine where the node lives elsewhere. Until this check each one made
a node there (a fresh key, an empty ledger) and answered "ok: 0 entries in 0 feeds", exit 0:
a wrong answer about a node that never existed, and litter in the directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gibsey import cli

READS = [
    ("ledger", "verify"),
    ("ledger", "export"),
    ("ledger", "show"),
    ("ledger", "balance"),
    ("ledger", "hearings"),
    ("mesh", "status"),
    ("mesh", "status", "--json"),
    ("story", "log"),
    ("story", "show"),
    ("story", "diff", "main"),
    ("story", "branch"),
    ("vm", "table"),
    ("watchdog", "deaths"),
]


@pytest.mark.parametrize("argv", READS, ids=" ".join)
def test_a_read_on_no_node_says_so_and_makes_nothing(
    argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for where in (tmp_path / "mistyped", tmp_path / "empty"):
        if where.name == "empty":
            where.mkdir()
        rc = cli.main(["--data", str(where), *argv])
        err = capsys.readouterr().err
        assert rc == 2
        assert f"gibsey {argv[0]}: no node in {where} (no node.key, no ledger.sqlite3)" in err
        assert not where.exists() or list(where.iterdir()) == []


def test_a_read_on_a_node_still_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same commands on a node's directory answer: here one the ledger CLI itself made."""
    data = str(tmp_path)
    assert cli.main(["--data", data, "ledger", "mint", "ada", "5"]) == 0
    capsys.readouterr()
    assert cli.main(["--data", data, "ledger", "verify"]) == 0
    assert "ok: 1 entries in 1 feeds" in capsys.readouterr().out


def test_story_branch_with_a_name_still_makes_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`story branch NAME` writes (a new branch), as `story import` does: it makes the node."""
    where = tmp_path / "new"
    cli.main(["--data", str(where), "story", "branch", "draft"])
    assert "no node in" not in capsys.readouterr().err
    assert (where / "node.key").exists()


def test_a_ledger_alone_is_read_without_becoming_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger copied alone to be checked elsewhere (no node.key beside it) is read, and
    gains no key from being read."""
    node, alone = tmp_path / "node", tmp_path / "alone"
    assert cli.main(["--data", str(node), "ledger", "mint", "ada", "5"]) == 0
    alone.mkdir()
    (alone / "ledger.sqlite3").write_bytes((node / "ledger.sqlite3").read_bytes())
    capsys.readouterr()
    for command in (["verify"], ["export"], ["show"], ["balance"], ["hearings"]):
        assert cli.main(["--data", str(alone), "ledger", *command]) == 0
    assert "ok: 1 entries in 1 feeds" in capsys.readouterr().out
    assert not (alone / "node.key").exists() and not (alone / "node_id").exists()


def test_a_write_that_makes_a_node_says_where_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `gibsey ledger mint` with a mistyped --data. It made a node there and minted into
    it, exit 0 and nothing said, so the real node's balance never moved and nobody knew why.
    Must hold: the mint is made (a write makes its node, as it always has) and stderr says a
    new node was made, naming the directory; the next write there says nothing more."""
    where = tmp_path / "mistyped"
    assert cli.main(["--data", str(where), "ledger", "mint", "ada", "5"]) == 0
    err = capsys.readouterr().err
    assert f"gibsey ledger: made a new node in {where} (it held none)" in err, err
    assert cli.main(["--data", str(where), "ledger", "mint", "ada", "1"]) == 0
    assert "made a new node" not in capsys.readouterr().err
    assert cli.main(["--data", str(where), "ledger", "balance", "ada"]) == 0
    assert "6" in capsys.readouterr().out


def test_a_part_file_written_where_no_node_is_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `gibsey vm load` and `gibsey gateway token` with a mistyped --data. Each wrote its
    file there (an opcode table, a token), exit 0 and nothing said (`vm` was not watched at
    all), so the running node never ran the program nor accepted the token. Must hold: the
    write is made, stderr names the file and the directory once; a second write says no more."""
    program = tmp_path / "halt.gasm"
    program.write_text("HALT\n")
    load = ["vm", "load", "--symbol", "0", "--rotation", "0", str(program)]
    # `vm load` makes the node, as writes do (an outside tester: its table alone was one
    # `vm table` then called no node); the token is a part's file only.
    for command, said_as in (
        (load, "made a new node in {where} (it held none)"),
        (["gateway", "token"], "wrote gateway.token in {where} (it held no node)"),
    ):
        where = tmp_path / f"mistyped-{command[0]}"
        assert cli.main(["--data", str(where), *command]) == 0
        err = capsys.readouterr().err
        said = f"gibsey {command[0]}: " + said_as.format(where=where)
        assert said in err, err
        assert cli.main(["--data", str(where), *command]) == 0
        assert "it held no" not in capsys.readouterr().err
    assert cli.main(["--data", str(tmp_path / "mistyped-vm"), "vm", "table", "-s", "0"]) == 0
