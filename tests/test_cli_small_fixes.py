"""Small defects of the `gibsey` command line, each tried with the real CLI (a subprocess with
pipes, as a script runs it) or its own functions:

1. `agent ask` with an unknown persona exited 0 (the node answers one with a line of text);
2. `vm run --fuel N` with N >= 2**64 wrapped around in ctypes (2**64 ran with no fuel);
3. `vm verify` said OK to a program over the 64 KiB that `vm load` refuses;
4. `story show --raw` added a newline the page does not have;
5. the `throttled` alert's breakdown (totals) read as the count of the alert's own interval;
6. `story import` exited 1 on a usage error, and `DIR --sample` imported the sample, ignoring DIR.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gibsey.harness.waiting import wait_until
from gibsey.node.agents import cli as agent_cli
from gibsey.node.agents.personas import load_personas
from gibsey.node.daemon import Node
from gibsey.node.glyph.opcode_table import MAX_PROGRAM
from gibsey.node.glyph.vm import binding as vm
from gibsey.node.spine.drops import THROTTLED, Due
from gibsey.node.spine.inputs import VisitorInputs

EXIT_USAGE = 2  # argparse's, and every gibsey command's for bad input (gibsey/cli.py)
REPO = Path(__file__).resolve().parents[1]
DREAM = REPO / "vm_zig" / "examples" / "dream.gasm"


def gibsey(*args: str, data: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real CLI, with no broker to reach (a write's announcement fails fast)."""
    env = dict(os.environ, COLUMNS="80", GIBSEY_BROKER="mqtt://127.0.0.1:9")
    env.pop("GIBSEY_DATA", None)
    where = ("--data", str(data)) if data is not None else ()
    return subprocess.run(
        [sys.executable, "-m", "gibsey.cli", *where, *args],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


# -- 1. agent ask: an unknown persona ----------------------------------------------------------
def test_agent_ask_unknown_persona_is_a_usage_error_naming_the_known_ones(tmp_path: Path) -> None:
    for extra in ((), ("--local",)):
        done = gibsey("agent", "ask", "nobody", "hello?", *extra, data=tmp_path / "node")
        err = done.stderr.decode()
        assert done.returncode == EXIT_USAGE, (extra, err)
        assert done.stdout == b""
        assert "no persona 'nobody'" in err, err
        assert all(p.slug in err for p in load_personas().ordered()), err


def test_agent_ask_unknown_persona_is_refused_before_the_node_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a node there, it answered `(no persona 'nobody')` as a final answer: exit 0."""
    (tmp_path / "node_id").write_text("n0123abcd\n")
    asked: list[dict[str, Any]] = []

    async def node_answers(*args: Any, **kwargs: Any) -> dict[str, Any]:
        asked.append(args[3])
        return {"text": f"(no persona {args[3]['persona']!r})", "final": True}

    monkeypatch.setattr(agent_cli, "_request", node_answers)
    args = argparse.Namespace(
        data=str(tmp_path),
        persona="nobody",
        question="hello?",
        broker=None,
        max_tokens=8,
        timeout=1.0,
        quiet=True,
        local=False,
    )
    ask = agent_cli._guard(agent_cli._ask)
    assert ask(args) == EXIT_USAGE
    assert asked == []
    assert "known personas: an-author, london-fox" in capsys.readouterr().err
    args.persona = "london-fox"  # a known one still goes to the node
    assert ask(args) == 0 and [a["persona"] for a in asked] == ["london-fox"]


# -- 2. vm run --fuel: no wrap-around past u64 ---------------------------------------------------
@pytest.mark.parametrize("fuel", [str(2**64), hex(2**64 + 5), str(2**70)])
def test_vm_run_refuses_fuel_over_the_vm_maximum(fuel: str) -> None:
    done = gibsey("vm", "run", str(DREAM), "-s", "london-fox", "-r", "dream", f"--fuel={fuel}")
    err = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, err
    assert done.stdout == b""
    assert "--fuel" in err and str(vm.MAX_FUEL) in err, err


def test_vm_run_takes_the_maximum_fuel() -> None:
    fuel = str(vm.MAX_FUEL)
    done = gibsey("vm", "run", str(DREAM), "-s", "london-fox", "-r", "dream", "--fuel", fuel)
    assert done.returncode == 0, done.stderr.decode()
    assert f"of {fuel} fuel" in done.stdout.decode()


def test_ctrl_c_stops_a_program_given_the_maximum_fuel(tmp_path: Path) -> None:
    """Tried: `gibsey vm run` of an endless loop with --fuel 2**64 - 1, then Ctrl-C: nothing
    happened (Python's handler waits for the foreign call to return: centuries), only SIGKILL
    stopped it. Must hold: SIGINT, sent once the VM is running (its worker thread exists), ends
    it with exit 130 and one line saying it was interrupted."""
    loop = tmp_path / "loop.gasm"
    loop.write_text("loop: JMP loop\n")
    command = [sys.executable, "-m", "gibsey.cli", "vm", "run", str(loop), "-s", "0", "-r", "0"]
    proc = subprocess.Popen(
        [*command, "--fuel", str(vm.MAX_FUEL)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As from a terminal: a shell's background job (CI run with `&`) ignores SIGINT, and a
        # child that inherits SIG_IGN gets no Ctrl-C handler from Python at all.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        tasks = Path(f"/proc/{proc.pid}/task")
        wait_until(
            lambda: proc.poll() is not None or len(list(tasks.iterdir())) >= 2, 60, "the VM thread"
        )
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert err.decode() == "gibsey vm run: interrupted; the program had not ended\n"
    assert out == b""


def test_vm_binding_refuses_fuel_that_ctypes_would_cut() -> None:
    code = vm_code()
    trigger = vm.Trigger(1, 3, 7, 0, 0)
    with pytest.raises(ValueError, match=str(vm.MAX_FUEL)):
        vm.run(code, trigger, fuel=2**64)
    assert vm.run(code, trigger, fuel=vm.MAX_FUEL).ok


def vm_code() -> bytes:
    from gibsey.node.glyph.vm import asm

    return asm.assemble(DREAM.read_text(), filename=str(DREAM))


# -- 3. vm verify: the size limit of vm load ----------------------------------------------------
def test_vm_verify_refuses_a_program_over_the_load_limit(tmp_path: Path) -> None:
    """Small code, a constant pool of 80,000 bytes: the verifier takes it, `vm load` does not."""
    big = tmp_path / "big.gasm"
    big.write_text(
        f'    PUSH 1\n    ASK "{"x" * 40_000}"\n    PUSH 1\n    ASK "{"y" * 40_000}"\n    HALT\n'
    )
    done = gibsey("vm", "verify", str(big))
    err = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, err
    assert done.stdout == b""
    assert f"the limit is {MAX_PROGRAM}" in err, err
    loaded = gibsey("vm", "load", str(big), "-s", "1", "-r", "3", data=tmp_path / "node")
    assert loaded.returncode == 1 and f"the limit is {MAX_PROGRAM}" in loaded.stderr.decode()
    assert gibsey("vm", "verify", str(DREAM)).returncode == 0


# -- 4. story show --raw: exactly the stored bytes ------------------------------------------------
PAGE = "First line\r\n\ta tabbed line, ünïcode, [bold]brackets[/bold]\r\nlast line, no newline"


@pytest.fixture(scope="module")
def story_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("story") / "node"
    for args in (("story", "import", "--sample"), ("story", "branch", "odd")):
        done = gibsey(*args, data=data)
        assert done.returncode == 0, done.stderr.decode()
    page = data / "page.md"
    page.write_bytes(PAGE.encode())
    done = gibsey("story", "write", "odd", "001", "--file", str(page), data=data)
    assert done.returncode == 0, done.stderr.decode()
    return data


@pytest.mark.parametrize("args", [("001", "--raw"), ("1", "--raw"), ("001",)])
def test_story_show_raw_is_the_stored_bytes_and_nothing_else(
    story_node: Path, args: tuple[str, ...]
) -> None:
    """`--raw`: "the page's text exactly as stored, nothing else (the default into a pipe)"."""
    done = gibsey("story", "show", "odd", *args, data=story_node)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == PAGE.encode()


def test_print_exact_adds_nothing(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from gibsey.core.console import print_exact

    print_exact("no newline\r\nat the end, é")
    print_exact("")
    print_exact("one newline\n")
    assert capsysbinary.readouterr().out == "no newline\r\nat the end, éone newline\n".encode()


# -- 5. the throttled alert: each count with its window --------------------------------------------
def test_throttled_breakdown_says_it_counts_since_the_start() -> None:
    inputs = VisitorInputs(per_second=5, per_source_per_second=1)
    for i in range(200):
        if inputs.admit_source(f"s{i % 2}", here=False, now=0.0) is None:
            inputs.admit(now=0.0)
    said = inputs.describe()
    assert said.startswith("since the start, "), said
    assert f"{inputs.refused_node} over the node's 5 inputs/s" in said
    assert f"{inputs.refused_source} over a source's 1/s" in said
    # As the node says it: the interval's count first, then the totals, labelled as totals.
    node: Any = SimpleNamespace(parts=SimpleNamespace(agents=None), inputs=inputs)
    why = Node._why_dropped(node, Due(THROTTLED, 3, inputs.refused, 10.0))
    assert why.endswith(
        f": since the start, {inputs.refused_node} over the node's 5 inputs/s, "
        f"{inputs.refused_source} over a source's 1/s, 0 over an actor's"
    ), why


# -- 6. story import: usage errors ----------------------------------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        ((), "one of the arguments DIR --sample is required"),
        (("CORPUS", "--sample"), "not allowed with"),
        (("--sample", "CORPUS"), "not allowed with"),
    ],
)
def test_story_import_usage_errors_exit_2_and_import_nothing(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    data = tmp_path / "node"
    words = [str(corpus) if a == "CORPUS" else a for a in args]
    done = gibsey("story", "import", *words, data=data)
    err = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, err
    assert says in err and "usage: gibsey story import" in err, err
    assert done.stdout == b""
    assert not data.exists()  # nothing imported, no node made


@pytest.mark.parametrize(
    ("name", "torn"), [("node.key", "cut"), ("node_id", "emptied")], ids=["key", "node-id"]
)
@pytest.mark.parametrize(
    "command", [("ledger", "verify"), ("story", "log"), ("ledger", "mint", "ada", "1")]
)
def test_a_torn_identity_file_is_one_line_not_a_traceback(
    tmp_path: Path, name: str, torn: str, command: tuple[str, ...]
) -> None:
    """Tried (an outside tester's power-cut sweep): a node.key cut short or an emptied node_id
    made `gibsey ledger verify`, `story log`, `ledger mint`, `mesh status` print a traceback
    (`gibsey up` said it in one line). Must hold: one line naming what is wrong, status 2."""
    data = tmp_path / "node"
    assert gibsey("ledger", "mint", "ada", "1", data=data).returncode == 0
    path = data / name
    path.write_bytes(path.read_bytes()[:-1] if torn == "cut" else b"")
    done = gibsey(*command, data=data)
    err = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, err
    assert "Traceback" not in err
    assert err.startswith(f"gibsey {command[0]}: ") and err.count("\n") == 1, err


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    """Tried (an outside tester): `gibsey vm table | head -1` ended in a BrokenPipeError
    traceback. Must hold: the command ends as a pipe's writer does (141), saying nothing."""
    data = tmp_path / "node"
    assert gibsey("ledger", "mint", "ada", "1", data=data).returncode == 0  # a node to read
    done = subprocess.run(  # the line head kept, then the command's own status
        f"{sys.executable} -m gibsey --data {data} vm table | head -1; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, COLUMNS="80"),
    )
    kept, status = done.stdout.splitlines()
    assert kept.strip() and status == "141", done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--data", ""], {}, "--data is empty: name the node's directory (or leave --data out)"),
        (
            [],
            {"GIBSEY_DATA": ""},
            "GIBSEY_DATA is set but empty: name the node's directory, or unset it",
        ),
    ],
    ids=["--data", "GIBSEY_DATA"],
)
def test_an_empty_data_directory_is_refused_not_the_default(
    tmp_path: Path, args: list[str], env: dict[str, str], said: str
) -> None:
    """Tried (an outside tester): `gibsey up --data ""` ran a node in ~/.local/share/gibsey,
    someone else's. Must hold: refused in one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "gibsey", *args, "ledger", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, HOME=str(tmp_path), **env),
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"gibsey ledger: {said}"
    assert not (tmp_path / ".local").exists()


def test_a_bad_node_id_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Tried (an outside tester): `gibsey up --node-id "BAD ID!"` on a new directory exited 2
    but kept the id in node_id, so every later start there failed. Must hold: a usage error,
    and no directory made."""
    data = tmp_path / "node"
    done = gibsey("up", "--node-id", "BAD ID!", data=data)
    assert done.returncode == 2
    assert b"'BAD ID!' is no node id: 1 to 32 of a-z 0-9 _ -" in done.stderr
    assert not data.exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["mesh", "sync", "00" * 32 + "@tcp://127.0.0.1:9", "--timeout", "-1"],
            "-1 is out of range: at least 0.1",
        ),
        (["rehearse", "--nodes", "0"], "0 is out of range: 1 to 16"),
        (["rehearse", "--nodes", "50"], "50 is out of range: 1 to 16"),
        (["rehearse", "--minutes", "-1"], "-1 is out of range: at least 0"),
        (
            ["agent", "ask", "london-fox", "hi", "--timeout", "nan"],
            "nan is out of range: at least 0.1",
        ),
    ],
    ids=["mesh sync --timeout", "rehearse --nodes 0", "rehearse --nodes 50", "--minutes", "ask"],
)
def test_a_number_out_of_its_range_is_a_usage_error(
    tmp_path: Path, args: list[str], said: str
) -> None:
    """Tried (an outside tester): `mesh sync --timeout -1` ran ("in -1.0s"), `rehearse
    --minutes -1` exited 0, `--nodes 0` exited 1 and `--nodes 50` started 50 nodes on two
    cores. Must hold: each is a usage error (exit 2) naming the range, and nothing runs."""
    done = gibsey(*args, data=tmp_path / "node")
    assert done.returncode == 2, done.stderr
    assert said in done.stderr.decode(), done.stderr
    assert not (tmp_path / "node").exists()
