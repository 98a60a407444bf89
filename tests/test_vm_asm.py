"""The assembler, the disassembler, the example programs and the `gibsey vm` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gibsey.cli import main
from gibsey.node.glyph.vm import binding as vm
from gibsey.node.glyph.vm.asm import AsmError, DisasmError, assemble, decode, disassemble
from gibsey.node.glyph.vm.isa import OPS, Operand
from tests.vm_support import REPO

EXAMPLES = sorted((REPO / "vm_zig" / "examples").glob("*.gasm"))


def test_encoding_of_a_small_program() -> None:
    data = assemble('.local n\nstart: PUSH -2 ; comment\nSTORE n\nPROPOSE "b"  # also\nHALT')
    assert data == (
        b"GZVM\x01\x00"
        + (1).to_bytes(2, "little")  # max_stack computed
        + (1).to_bytes(2, "little")  # one local
        + (1).to_bytes(2, "little")  # one constant
        + (14).to_bytes(4, "little")
        + b"\x01\x00b"
        + b"\x02"
        + (-2).to_bytes(8, "little", signed=True)
        + b"\x41\x00"
        + b"\x55\x00"
        + b"\x01"
    )


def test_strings_are_shared_and_escaped() -> None:
    data = assemble('EMITS "t" "t"\nEMITS "a\\"b;#c\\n" "t"\nHALT')
    d = decode(data)
    assert d.consts == ["t", 'a"b;#c\n']


def test_every_mnemonic_assembles() -> None:
    operand_text = {
        Operand.NONE: "",
        Operand.IMM64: "1",
        Operand.CONST: '"s"',
        Operand.CONST2: '"s" "s"',
        Operand.LOCAL: "0",
        Operand.FIELD: "arg",
        Operand.TARGET: "end",
    }
    lines = []
    for op in OPS:
        lines.append(f"{op.name.lower()} {operand_text[op.operand]}")
    text = "\n".join(lines) + "\nend: HALT"
    data = assemble(text, check=False)
    assert [op.name for _, op, _ in decode(data).instrs] == [op.name for op in OPS] + ["HALT"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("HALT\nFROB", 2, "unknown instruction 'FROB'"),
        ("PUSH", 1, "PUSH takes 1 operand"),
        ("PUSH 1 2\nHALT", 1, "PUSH takes 1 operand"),
        ("HALT\n\nPUSH x1", 3, "expected an integer"),
        (f"PUSH {2**63}\nHALT", 1, "out of range"),
        ("JMP nowhere", 1, "unknown label 'nowhere'"),
        ("a: HALT\na: HALT", 2, "defined twice"),
        ("LOAD count\nHALT", 1, "unknown local 'count'"),
        ("LDT colour\nHALT", 1, "unknown trigger field"),
        ('EMIT "open\nHALT', 1, "unterminated string"),
        ("EMIT topic\nHALT", 1, 'expected a string "..."'),
        (".stack\nHALT", 1, ".stack takes one argument"),
        (".frob 1\nHALT", 1, "unknown directive"),
        # Verifier findings are mapped back to the line of the offending instruction.
        ("NOP\nADD\nHALT", 2, "stack underflow"),
        ("NOP\nNOP", 2, "run past the last instruction"),
        ("top: PUSH 1\nJMP top", 1, "different stack depths"),
        ("EMIT $3\nHALT", 1, "constant index out of range"),
        (".stack 1\nPUSH 1\nPUSH 2\nHALT", 3, "declared max_stack"),
    ],
)
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(AsmError) as info:
        assemble(text, filename="glyph.gasm")
    assert info.value.line == line, str(info.value)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"glyph.gasm:{line}: ")


def test_disassembly_round_trips_and_is_readable() -> None:
    text = """
    .local i
        PUSH 3
        STORE i
    loop:
        LOAD i
        EMIT "tick"
        LOAD i
        PUSH 1
        SUB
        DUP
        STORE i
        JNZ loop
        LDT symbol
        ASK "a prompt with \\"quotes\\" and\\ttabs"
        HALT
    """
    data = assemble(text)
    listing = disassemble(data)
    assert assemble(listing) == data
    assert "JNZ L000b" in listing and "L000b:" in listing
    assert 'EMIT "tick"' in listing and "LDT symbol" in listing


def test_disassembly_keeps_duplicate_and_unused_constants() -> None:
    data = assemble('.const "x"\n.const "x"\n.const "unused"\nEMITS $1 "x"\nHALT')
    listing = disassemble(data)
    assert "EMITS $1" in listing
    assert assemble(listing) == data


def test_disassembler_rejects_undecodable_bytes() -> None:
    with pytest.raises(DisasmError):
        disassemble(b"nope")
    good = assemble("HALT")
    with pytest.raises(DisasmError) as info:
        disassemble(good[:-1] + b"\xee")
    assert info.value.offset == len(good) - 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_assemble_verify_and_round_trip(path: Path) -> None:
    data = assemble(path.read_text(), filename=str(path))
    vm.verify(data)
    assert assemble(disassemble(data)) == data


def test_dream_example_asks_the_symbols_persona() -> None:
    data = assemble((REPO / "vm_zig/examples/dream.gasm").read_text())
    fox = vm.run(data, vm.Trigger(symbol=1, rotation=3))
    hidden = vm.run(data, vm.Trigger(symbol=40, rotation=3))
    assert [e.to_dict()["kind"] for e in fox.effects] == ["ask", "propose", "emit"]
    assert fox.effects[0].a == 1 and hidden.effects[0].a == 15


def test_loop_example_runs_arg_iterations() -> None:
    data = assemble((REPO / "vm_zig/examples/loop.gasm").read_text())
    r = vm.run(data, vm.Trigger(symbol=0, rotation=0, arg=1000), fuel=100_000)
    assert r.ok and r.fuel_used == 6 + 18 * 1000 + 3


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_asm_dis_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "g.gasm"
    src.write_text('LDT actor\nPUSH 5\nMINT\nLDT symbol\nASK "hello"\nHALT\n')
    assert main(["vm", "asm", str(src)]) == 0
    out = tmp_path / "g.gbc"
    assert out.read_bytes()[:4] == b"GZVM"
    assert "wrote" in capsys.readouterr().out

    assert main(["vm", "dis", str(out)]) == 0
    listing = capsys.readouterr().out
    assert assemble(listing) == out.read_bytes()

    for file in (src, out):  # text and bytecode both run
        code = main(
            ["vm", "run", str(file), "--symbol", "london-fox", "-r", "dream", "--actor", "4"]
        )
        assert code == 0
        text = capsys.readouterr().out
        assert "mint    actor=4 amount=5" in text
        assert "ask     persona=1 prompt='hello'  (london-fox)" in text


def test_cli_run_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "div.gasm"
    src.write_text('PROPOSE "x"\nPUSH 1\nPUSH 0\nDIV\nHALT\n')
    assert main(["vm", "run", str(src), "-s", "0", "-r", "0"]) == 1
    text = capsys.readouterr().out
    assert "DIV_BY_ZERO at pc 20" in text and "(DIV)" in text and "discarded" in text

    assert main(["vm", "run", str(src), "-s", "0", "-r", "0", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"]["status"] == "DIV_BY_ZERO"
    assert doc["effects"] == [] and doc["partial_effects"] == [{"kind": "propose", "branch": "x"}]

    bad = tmp_path / "bad.gasm"
    bad.write_text("PUSH 1\nADD\nHALT\n")
    assert main(["vm", "asm", str(bad)]) == 2
    assert "bad.gasm:2: stack underflow" in capsys.readouterr().err
    assert main(["vm", "run", str(bad), "-s", "0", "-r", "0"]) == 2

    broken = tmp_path / "broken.gbc"
    broken.write_bytes(assemble("HALT")[:-1] + b"\x99")
    assert main(["vm", "verify", str(broken)]) == 2
    assert "BAD_OPCODE at byte 16" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["vm", "run", str(src), "-s", "64", "-r", "0"])
    assert "out of range" in capsys.readouterr().err


def test_cli_fuel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "spin.gasm"
    src.write_text("top: JMP top\n")
    assert main(["vm", "run", str(src), "-s", "1", "-r", "1", "--fuel", "50"]) == 1
    assert "FUEL_EXHAUSTED" in capsys.readouterr().out


def test_bench_rows_quick() -> None:
    from gibsey.bench.vm import run_vm_bench

    rows = run_vm_bench(quick=True)
    assert [r.name for r in rows] == [
        "vm.loop",
        "vm.speedup",
        "vm.verify_run.median",
        "vm.verify_run.p99",
    ]
    assert all(r.figure > 0 and r.baseline > 0 for r in rows)
    assert rows[0].figure > rows[0].baseline  # Zig beats the Python model even in a quick run
