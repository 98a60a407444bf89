"""Behaviour of the Zig VM through the Python binding: each instruction family, each verifier
rejection with its offset, the binding's API and failure modes, and the VM's own Zig tests
natively and for aarch64 under qemu."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.node.glyph.vm import binding as vm
from gibsey.node.glyph.vm.asm import assemble
from gibsey.node.glyph.vm.isa import I64_MAX, I64_MIN, EffectKind, Status
from tests.vm_support import BUILD_ENV, BUILD_SH, REPO, header

TRIG = vm.Trigger(symbol=5, rotation=3, actor=7, node=2, arg=-9)


def run_asm(text: str, trigger: vm.Trigger = TRIG, fuel: int = 10_000) -> vm.RunResult:
    return vm.run(assemble(text), trigger, fuel)


def top(text: str) -> int:
    r = run_asm(text + "\nHALT")
    assert r.ok, r.error
    return r.stack[-1]


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ("PUSH 7\nPUSH 5\nADD", 12),
        ("PUSH 7\nPUSH 5\nSUB", 2),
        ("PUSH -7\nPUSH 5\nMUL", -35),
        ("PUSH -7\nPUSH 2\nDIV", -3),  # truncates toward zero
        ("PUSH 7\nPUSH -2\nDIV", -3),
        ("PUSH -7\nPUSH 2\nMOD", -1),  # sign of the dividend
        ("PUSH 7\nPUSH -2\nMOD", 1),
        (f"PUSH {I64_MIN}\nPUSH -1\nMOD", 0),
        ("PUSH 5\nNEG", -5),
        ("PUSH 12\nPUSH 10\nAND", 8),
        ("PUSH 12\nPUSH 10\nOR", 14),
        ("PUSH 12\nPUSH 10\nXOR", 6),
        ("PUSH -1\nPUSH 0xff\nAND", 255),
    ],
)
def test_arithmetic(body: str, want: int) -> None:
    assert top(body) == want


@pytest.mark.parametrize(
    ("op", "a", "b", "want"),
    [
        ("EQ", 3, 3, 1),
        ("EQ", 3, 4, 0),
        ("NE", 3, 4, 1),
        ("LT", -1, 0, 1),
        ("LT", 0, 0, 0),
        ("LE", 0, 0, 1),
        ("GT", 1, 0, 1),
        ("GE", -5, -4, 0),
    ],
)
def test_comparison(op: str, a: int, b: int, want: int) -> None:
    assert top(f"PUSH {a}\nPUSH {b}\n{op}") == want


def test_not_and_stack_shuffles() -> None:
    assert top("PUSH 0\nNOT") == 1
    assert top("PUSH -3\nNOT") == 0
    r = run_asm("PUSH 1\nPUSH 2\nSWAP\nOVER\nDUP\nPOP\nHALT")
    assert r.stack == [2, 1, 2]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (f"PUSH {I64_MAX}\nPUSH 1\nADD", Status.OVERFLOW),
        (f"PUSH {I64_MIN}\nPUSH 1\nSUB", Status.OVERFLOW),
        (f"PUSH {I64_MAX}\nPUSH 2\nMUL", Status.OVERFLOW),
        (f"PUSH {I64_MIN}\nPUSH -1\nDIV", Status.OVERFLOW),
        ("PUSH 1\nPUSH 0\nDIV", Status.DIV_BY_ZERO),
        ("PUSH 1\nPUSH 0\nMOD", Status.DIV_BY_ZERO),
    ],
)
def test_arithmetic_errors_stop_at_the_instruction(body: str, status: Status) -> None:
    r = run_asm(body + "\nHALT")
    assert r.error is not None
    assert r.error.status is status
    assert r.error.pc == 18  # two 9-byte PUSHes
    assert r.stack == r.stack[:2] and len(r.stack) == 2  # the failing instruction changed nothing
    assert r.fuel_used == 3
    assert r.effects == []


def test_neg_min_overflows() -> None:
    r = run_asm(f"PUSH {I64_MIN}\nNEG\nHALT")
    assert r.error is not None and r.error.status is Status.OVERFLOW


def test_locals_start_at_zero_every_run() -> None:
    prog = assemble(".local n\nLOAD n\nPUSH 1\nADD\nDUP\nSTORE n\nHALT")
    for _ in range(3):
        r = vm.run(prog, TRIG)
        assert r.stack == [1] and r.locals == [1]


def test_loop_and_jumps() -> None:
    text = """
    .local sum
    .local i
        PUSH 100
        STORE i
    loop:
        LOAD i
        JZ end
        LOAD sum
        LOAD i
        ADD
        STORE sum
        LOAD i
        PUSH 1
        SUB
        STORE i
        JMP loop
    end:
        LOAD sum
        HALT
    """
    r = run_asm(text)
    assert r.ok and r.stack == [5050]
    assert r.fuel_used == 2 + 100 * 11 + 2 + 2
    # JNZ takes the branch on non-zero only.
    assert top("PUSH 0\nJNZ skip\nPUSH 1\nJMP out\nskip: PUSH 2\nout: NOP") == 1
    assert top("PUSH 5\nJNZ skip\nPUSH 1\nJMP out\nskip: PUSH 2\nout: NOP") == 2


def test_trigger_fields() -> None:
    t = vm.Trigger(symbol=63, rotation=2, actor=-4, node=9, arg=I64_MAX)
    prog = assemble("LDT symbol\nLDT rotation\nLDT state\nLDT actor\nLDT node\nLDT arg\nHALT")
    assert vm.run(prog, t).stack == [63, 2, 254, -4, 9, I64_MAX]
    assert t.state == 254


@pytest.mark.parametrize(("symbol", "rotation"), [(64, 0), (0, 4), (-1, 0), (0, -1)])
def test_bad_trigger(symbol: int, rotation: int) -> None:
    r = vm.run(assemble("HALT"), vm.Trigger(symbol, rotation))
    assert r.error is not None and r.error.status is Status.BAD_TRIGGER
    assert r.fuel_used == 0


def test_effects_in_program_order() -> None:
    text = """
        PUSH 42
        EMIT "glyph/chime"
        EMITS "glyph/chime" "ünïcode ✓"
        LDT actor
        PUSH 10
        MINT
        PUSH 1
        PUSH 2
        PUSH 3
        GIFT
        LDT symbol
        ASK "dream of the fox"
        PROPOSE "fox-dream"
        HALT
    """
    r = run_asm(text)
    assert r.ok and r.stack == []
    got = [(e.kind, e.a, e.b, e.c, e.s1, e.s2) for e in r.effects]
    assert got == [
        (EffectKind.EMIT, 42, 0, 0, "glyph/chime", None),
        (EffectKind.EMITS, 0, 0, 0, "glyph/chime", "ünïcode ✓"),
        (EffectKind.MINT, 7, 10, 0, None, None),
        (EffectKind.GIFT, 1, 2, 3, None, None),
        (EffectKind.ASK, 5, 0, 0, "dream of the fox", None),
        (EffectKind.PROPOSE, 0, 0, 0, "fox-dream", None),
    ]
    assert [e.to_dict()["kind"] for e in r.effects] == [
        "emit",
        "emit",
        "mint",
        "gift",
        "ask",
        "propose",
    ]
    assert r.effects[0].topic == "glyph/chime" and r.effects[0].payload == 42
    assert r.effects[1].payload == "ünïcode ✓"
    assert r.effects[3].to_dict() == {"kind": "gift", "from": 1, "to": 2, "amount": 3}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("PUSH -1\nPUSH 5\nMINT", Status.BAD_ACTOR),
        ("PUSH 1\nPUSH 0\nMINT", Status.BAD_AMOUNT),
        ("PUSH 1\nPUSH -1\nPUSH 5\nGIFT", Status.BAD_ACTOR),
        ("PUSH 1\nPUSH 2\nPUSH -5\nGIFT", Status.BAD_AMOUNT),
        ('PUSH 64\nASK "x"', Status.BAD_PERSONA),
        ('PUSH -1\nASK "x"', Status.BAD_PERSONA),
    ],
)
def test_effect_argument_errors(body: str, status: Status) -> None:
    r = run_asm('PROPOSE "before"\n' + body + "\nHALT")
    assert r.error is not None and r.error.status is status
    assert r.effects == []  # a failed run publishes nothing...
    assert [e.kind for e in r.partial_effects] == [EffectKind.PROPOSE]  # ...but shows what it had


def test_effect_buffer_full() -> None:
    with vm.Vm(effects_cap=3) as small:
        r = small.run(assemble('PROPOSE "a"\n' * 4 + "HALT"), TRIG)
        assert r.error is not None and r.error.status is Status.EFFECTS_FULL
        assert r.error.pc == 6 and len(r.partial_effects) == 3


def test_fuel() -> None:
    spin = assemble("top: NOP\nJMP top")
    r = vm.run(spin, TRIG, fuel=1001)
    assert r.error is not None and r.error.status is Status.FUEL_EXHAUSTED
    assert r.fuel_used == 1001 and r.error.pc == 1
    r0 = vm.run(spin, TRIG, fuel=0)
    assert r0.error is not None and r0.fuel_used == 0
    assert vm.run(assemble("HALT"), TRIG, fuel=1).ok
    with pytest.raises(ValueError):
        vm.run(spin, TRIG, fuel=-1)


# --- verifier -----------------------------------------------------------------------------------

CS = 16  # code start when the pool is empty
PUSH1 = b"\x02" + (1).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("data", "status", "offset"),
    [
        (b"", Status.TRUNCATED, 0),
        (header()[:10], Status.TRUNCATED, 0),
        (header(magic=b"GZVX"), Status.BAD_MAGIC, 0),
        (header(version=2), Status.BAD_VERSION, 4),
        (header(flags=1), Status.BAD_HEADER, 5),
        (header(n_locals=257), Status.BAD_HEADER, 8),
        (header(n_consts=300), Status.BAD_HEADER, 10),
        (header(max_stack=257), Status.EXCEEDS_LIMITS, 6),  # default VM: stack_cap 256
        (header(n_locals=65), Status.EXCEEDS_LIMITS, 8),  # locals_cap 64
        (header(code=b"\x00" * 4096 + b"\x01"), Status.EXCEEDS_LIMITS, 12),  # code_cap 4096
        (header(consts=(b"ok",), n_consts=2), Status.TRUNCATED, CS + 4),
        (header(consts=(b"\xff\xfe",)), Status.BAD_STRING, CS),
        (header(code=b"\x01", code_len=2), Status.TRUNCATED, CS),
        (header(code=b"\x01\x00", code_len=1), Status.TRAILING_BYTES, CS + 1),
        (header(code=b"\x00\xee\x01"), Status.BAD_OPCODE, CS + 1),
        (header(code=b"\x00\x02\x01\x02"), Status.TRUNCATED_OPERAND, CS + 1),
        (header(code=b"\x00\x30\x00"), Status.TRUNCATED_OPERAND, CS + 1),
        (header(code=b"\x55\x00\x01"), Status.BAD_CONST, CS),
        (header(consts=(b"t",), code=b"\x51\x00\x01\x01"), Status.BAD_CONST, CS + 3),
        (header(code=b"\x40\x04\x01"), Status.BAD_LOCAL, CS),
        (header(code=b"\x42\x06\x01"), Status.BAD_FIELD, CS),
        (header(code=PUSH1 + b"\x31\x01\x00\x01"), Status.BAD_JUMP, CS + 9),  # into an operand
        (header(code=b"\x30\x03\x00"), Status.BAD_JUMP, CS),  # == code_len
        (header(code=b"\x30\xff\xff"), Status.BAD_JUMP, CS),
        (header(code=b"\x00\x10\x01"), Status.STACK_UNDERFLOW, CS + 1),
        (header(code=b"\x01\x10\x01"), Status.OK, 0),  # unreachable underflow is fine
        (header(max_stack=1, code=PUSH1 + PUSH1 + b"\x01"), Status.STACK_OVERFLOW, CS + 9),
        (header(code=PUSH1 + b"\x30\x00\x00"), Status.DEPTH_MISMATCH, CS),
        # JZ at 9 jumps to HALT at 14 with depth 0; the fallthrough LDT (at 12) reaches 14
        # with depth 1: the mismatch is reported at the join.
        (
            header(code=PUSH1 + b"\x31\x0e\x00" + b"\x42\x00" + b"\x01"),
            Status.DEPTH_MISMATCH,
            CS + 14,
        ),
        (header(code=b""), Status.FALLS_OFF_END, CS),
        (header(code=b"\x00"), Status.FALLS_OFF_END, CS),
        (header(code=PUSH1 + b"\x32\x00\x00"), Status.FALLS_OFF_END, CS + 9),
    ],
)
def test_verifier_rejections(data: bytes, status: Status, offset: int) -> None:
    machine = vm.default_vm()
    assert machine.check(data) == (status, offset)
    if status is Status.OK:
        vm.verify(data)
        return
    with pytest.raises(vm.VerifyError) as info:
        vm.verify(data)
    assert info.value.status is status and info.value.offset == offset
    assert status.name in str(info.value)
    # run() refuses the same program the same way, before running anything.
    with pytest.raises(vm.VerifyError) as again:
        vm.run(data, TRIG)
    assert (again.value.status, again.value.offset) == (status, offset)


# --- binding ------------------------------------------------------------------------------------


def test_vm_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="out of range"):
        vm.Vm(stack_cap=0)
    with pytest.raises(ValueError, match="out of range"):
        vm.Vm(locals_cap=257)
    machine = vm.Vm(stack_cap=2, locals_cap=0, effects_cap=1, code_cap=16)
    assert machine.check(assemble("PUSH 1\nPUSH 2\nPUSH 3\nHALT"))[0] is Status.EXCEEDS_LIMITS
    machine.close()
    with pytest.raises(ValueError, match="closed"):
        machine.check(b"")


def test_missing_library_says_run_make(tmp_path: Path) -> None:
    script = (
        "from gibsey.node.glyph.vm import binding as vm\n"
        "try:\n    vm.run(b'', vm.Trigger(0, 0))\n"
        "except vm.VmLibraryError as e:\n    print('MSG', e)\n"
    )
    env = {"GIBSEY_VM_LIB": str(tmp_path / "nope.so"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "MSG" in out.stdout and "make" in out.stdout


def test_results_do_not_alias_vm_buffers() -> None:
    prog = assemble('PUSH 1\nEMIT "a"\nPUSH 2\nHALT')
    first = vm.run(prog, TRIG)
    vm.run(assemble('PUSH 9\nEMIT "b"\nPUSH 8\nHALT'), TRIG)
    assert first.effects[0].a == 1 and first.effects[0].s1 == "a" and first.stack == [2]


# --- Zig's own tests ----------------------------------------------------------------------------


def test_zig_unit_tests_native() -> None:
    out = subprocess.run(
        [str(BUILD_SH), "test"], capture_output=True, text=True, timeout=600, env=BUILD_ENV
    )
    assert out.returncode == 0, out.stderr


def test_zig_unit_tests_aarch64_under_qemu() -> None:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")
    out = subprocess.run(
        [str(BUILD_SH), "test-aarch64"], capture_output=True, text=True, timeout=600, env=BUILD_ENV
    )
    assert out.returncode == 0, out.stderr


def test_aarch64_library_is_built() -> None:
    lib = REPO / "vm_zig" / "zig-out" / "aarch64" / "libgibsey_vm.so"
    if not lib.exists():
        subprocess.run([str(BUILD_SH), "lib"], check=True, timeout=600, env=BUILD_ENV)
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
