"""What the commands print into a pipe or a file (issue 17, items 3 and 4): the CLI run as a
subprocess with stdout and stderr pipes, as a script or `| cat` would run it.

Page text comes out byte for byte as stored (no wrapping at 80 columns, tabs kept, `:smile:` not
turned into an emoji, markup-like brackets kept, CRLF kept); `story diff` marks removed and added
words as git's `--word-diff=plain` does; an error is one line however long; a read never claims
to have recorded anything; a bench table keeps each row on one line.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.bench.report import Row, print_rows
from gibsey.core.console import make_console

PAGE = (
    "First line of a page\r\n"
    "\tA tabbed line :smile: with [bold]markup-like[/bold] brackets and "
    + "a long run of words " * 12
    + "\r\nlast line without a newline"
).encode()


def gibsey(
    data: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, COLUMNS="80", GIBSEY_BROKER="mqtt://127.0.0.1:9")  # no broker there
    return subprocess.run(
        [sys.executable, "-m", "gibsey.cli", "--data", str(data), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node's data with the sample story and a branch whose page 001 is PAGE."""
    data = tmp_path_factory.mktemp("node")
    for args in (("story", "import", "--sample"), ("story", "branch", "odd")):
        done = gibsey(data, *args)
        assert done.returncode == 0, done.stderr.decode()
    page = data / "page.md"
    page.write_bytes(PAGE)
    done = gibsey(data, "story", "write", "odd", "001", "--file", str(page))
    assert done.returncode == 0, done.stderr.decode()
    return data


@pytest.mark.parametrize("args", [("001",), ("1",), ("1", "--raw")])
def test_a_page_into_a_pipe_is_the_stored_bytes(node: Path, args: tuple[str, ...]) -> None:
    """Tried: `story show odd 001 | cat` (and page id `1`, and `--raw`). Must hold: stdout is
    exactly the bytes written, nothing else: not even the final newline the page lacks (a
    script comparing it with the file it imported finds them equal)."""
    done = gibsey(node, "story", "show", "odd", *args)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == PAGE


def test_a_diff_into_a_pipe_marks_removed_and_added_words(node: Path) -> None:
    done = gibsey(node, "story", "diff", "main", "odd", "--page", "1")
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert out.startswith("page 001 ")
    assert "[-# -]{+First line of a page\r\n\t+}A [-Preface" in out  # tabs and CRLF kept
    assert "\x1b[" not in out  # no colour codes into a pipe


def test_an_error_into_a_pipe_is_one_line(node: Path) -> None:
    long_branch = "a-branch-with-a-name-long-enough-to-wrap-any-eighty-column-terminal-twice-over"
    done = gibsey(node, "story", "show", long_branch, "001")
    assert done.returncode == 1
    assert done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and long_branch in err, err


def test_a_balance_is_a_read_and_says_nothing_was_recorded(node: Path) -> None:
    """Tried: `gibsey ledger balance` with no broker. Must hold: stdout is the answer only; the
    unreachable broker is said on stderr, and a read never says "recorded"."""
    done = gibsey(node, "ledger", "balance")
    assert done.returncode == 0, done.stderr.decode()
    assert b"announced" not in done.stdout
    err = done.stderr.decode()
    assert "not announced on MQTT" in err and "recorded" not in err, err


def test_a_bench_table_into_a_file_keeps_each_row_on_one_line() -> None:
    rows = [
        Row(
            "dial frame -> ritual p99, 10-node rehearsal, visitors asking the model",
            4.2,
            2.1,
            "ms",
            goal=("<=", 1.5),
            note="the two cores are the limit on this machine, said at length",
        )
    ]
    out = io.StringIO()
    print_rows("bench", rows, make_console(file=out))
    lines = [ln for ln in out.getvalue().splitlines() if "dial frame" in ln]
    assert len(lines) == 1 and "said at length" in lines[0], out.getvalue()


def test_help_into_a_pipe_gives_each_command_one_line() -> None:
    """The README: `gibsey --help` lists every subcommand, one line each. Into a pipe argparse
    wrapped at 80 columns, and six of them took two lines."""
    done = subprocess.run(
        [sys.executable, "-m", "gibsey.cli", "--help"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("COMMAND\n", 2)[-1].splitlines()
    assert all(line.startswith("    ") and len(line.split()) > 1 for line in listed), listed
    assert {"doctor", "rehearse", "mesh", "agent", "story", "dial"} <= {
        line.split()[0] for line in listed
    }
