"""Property tests: random and mutated bytecode never crashes or hangs the verifier or the VM, every
run ends within its fuel, and the Zig VM agrees with the Python reference model
(node/vm_reference.py) on the verifier's verdict and offset and on every run's status, pc, fuel,
effects, final stack and locals.

Example counts are kept modest so the whole VM suite stays well under a minute; raise them with
HYPOTHESIS_PROFILE=vm-long for a soak run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gibsey.node.glyph.vm import binding as vm
from gibsey.node.glyph.vm import reference as ref
from gibsey.node.glyph.vm.asm import assemble
from gibsey.node.glyph.vm.isa import HEADER_SIZE, I64_MAX, I64_MIN, MAGIC, OPS, Status
from tests.vm_support import header, ref_outcome, zig_outcome

settings.register_profile(
    "vm",
    max_examples=1000,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("vm-long", parent=settings.get_profile("vm"), max_examples=20_000)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "vm"))
if os.environ.get("HYPOTHESIS_PROFILE", "vm") not in ("vm", "vm-long"):
    PROFILE = settings.get_profile("vm")

# A small VM (small effect buffer and stack) so EFFECTS_FULL and EXCEEDS_LIMITS are reachable;
# the reference model is given the same limits.
LIMITS = ref.Limits(stack_cap=16, locals_cap=8, code_cap=1024, effects_cap=4)
MACHINE = vm.Vm(
    stack_cap=LIMITS.stack_cap,
    locals_cap=LIMITS.locals_cap,
    effects_cap=LIMITS.effects_cap,
    code_cap=LIMITS.code_cap,
)
MAX_FUEL = 3000

INTS = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([I64_MIN, I64_MIN + 1, I64_MAX, I64_MAX - 1, 2**32, -(2**31), 63, 64]),
    st.integers(I64_MIN, I64_MAX),
)
TRIGGERS = st.builds(
    vm.Trigger,
    # 64 and 4 are out of range: rare on purpose, so most runs get to execute.
    symbol=st.integers(0, 64),
    rotation=st.integers(0, 4),
    actor=st.one_of(st.integers(-1, 5), INTS),
    node=st.integers(0, 3),
    arg=INTS,
)
STRINGS = ["glyph/chime", "ritual/dream", "", "ünï ✓", "fox"]
N_LOCALS = 3


BINARY_OPS = ["ADD", "SUB", "MUL", "DIV", "MOD", "AND", "OR", "XOR"]
BINARY_OPS += ["EQ", "NE", "LT", "LE", "GT", "GE"]


def _string(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(STRINGS))


# The straight-line statements: kind -> (stack depth it needs, its change to the depth, its line).
SIMPLE: dict[str, tuple[int, int, Callable[[st.DrawFn], str]]] = {
    "push": (0, +1, lambda draw: f"PUSH {draw(INTS)}"),
    "load": (0, +1, lambda draw: f"LOAD {draw(st.integers(0, N_LOCALS - 1))}"),
    "ldt": (0, +1, lambda draw: f"LDT {draw(st.integers(0, 5))}"),
    "propose": (0, 0, lambda draw: f'PROPOSE "{_string(draw)}"'),
    "emits": (0, 0, lambda draw: f'EMITS "{_string(draw)}" "{_string(draw)}"'),
    "unary": (1, 0, lambda draw: draw(st.sampled_from(["NEG", "NOT"]))),
    "store": (1, -1, lambda draw: f"STORE {draw(st.integers(0, N_LOCALS - 1))}"),
    "dup": (1, +1, lambda _draw: "DUP"),
    "pop": (1, -1, lambda _draw: "POP"),
    "emit": (1, -1, lambda draw: f'EMIT "{_string(draw)}"'),
    "ask": (1, -1, lambda draw: f'ASK "{_string(draw)}"'),
    "binary": (2, -1, lambda draw: draw(st.sampled_from(BINARY_OPS))),
    "swap": (2, 0, lambda _draw: "SWAP"),
    "over": (2, +1, lambda _draw: "OVER"),
    "mint": (2, -2, lambda _draw: "MINT"),
    "gift": (3, -3, lambda _draw: "GIFT"),
}


def _choices(depth: int, nest: int) -> list[str]:
    """The kinds of statement that fit at this stack depth and nesting."""
    fits = {kind: (need, change) for kind, (need, change, _line) in SIMPLE.items()}
    if nest < 2:
        fits |= {"loop": (0, 0), "if": (1, -1)}
    choices = [kind for kind, (need, _change) in fits.items() if depth >= need]
    if depth >= 6:  # keep within the small VM's stack: only statements that consume
        choices = [kind for kind in choices if fits[kind][0] >= 1 and fits[kind][1] <= 0]
    return choices


@st.composite
def statements(draw: st.DrawFn, depth: int, nest: int, labels: list[int]) -> tuple[list[str], int]:
    """A straight-line-or-structured run of statements from stack depth `depth`; returns the lines
    and the depth after them. Structured pieces (if, loop) are stack-neutral, so every generated
    program passes the verifier by construction."""
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(_choices(depth, nest)))
        if kind == "if":
            lines += _if_block(draw, depth, nest, labels)
            depth -= 1
        elif kind == "loop":
            lines += _loop_block(draw, depth, nest, labels)
        else:
            _need, change, line = SIMPLE[kind]
            lines.append(line(draw))
            depth += change
    return lines, depth


def _if_block(draw: st.DrawFn, depth: int, nest: int, labels: list[int]) -> list[str]:
    """JZ/JNZ over a body: consumes the condition, the body is stack-neutral."""
    label = len(labels)
    labels.append(label)
    body, d = draw(statements(depth - 1, nest + 1, labels))
    lines = [f"{draw(st.sampled_from(['JZ', 'JNZ']))} L{label}"]
    return [*lines, *body, *_rebalance(d, depth - 1), f"L{label}:"]


def _loop_block(draw: st.DrawFn, depth: int, nest: int, labels: list[int]) -> list[str]:
    """A counted loop around a stack-neutral body; a count of 0 runs away downwards and the fuel
    budget ends it."""
    label = len(labels)
    labels.append(label)
    counter = draw(st.integers(0, N_LOCALS - 1))
    lines = [f"PUSH {draw(st.integers(0, 4))}", f"STORE {counter}", f"L{label}:"]
    body, d = draw(statements(depth, nest + 1, labels))
    lines += body + _rebalance(d, depth)
    return [*lines, f"LOAD {counter}", "PUSH 1", "SUB", "DUP", f"STORE {counter}", f"JNZ L{label}"]


def _rebalance(have: int, want: int) -> list[str]:
    return ["POP"] * (have - want) if have >= want else ["PUSH 0"] * (want - have)


@st.composite
def programs(draw: st.DrawFn) -> bytes:
    body, _depth = draw(statements(0, 0, []))
    text = f".locals {N_LOCALS}\n" + "\n".join(body) + "\nHALT\n"
    return assemble(text)


def agree(data: bytes, trigger: vm.Trigger, fuel: int) -> tuple[Any, ...]:
    zig = zig_outcome(MACHINE, data, trigger, fuel)
    model = ref_outcome(data, trigger, fuel, LIMITS)
    assert zig == model
    # Shown by --hypothesis-show-statistics: proves the generators reach every kind of outcome.
    event(zig[0].name)
    return zig


@PROFILE
@given(data=programs(), trigger=TRIGGERS, fuel=st.integers(0, MAX_FUEL))
def test_generated_programs_agree_with_the_reference(
    data: bytes, trigger: vm.Trigger, fuel: int
) -> None:
    outcome = agree(data, trigger, fuel)
    status = outcome[0]
    # Generated programs are valid by construction (or merely too big for the small VM).
    assert not status.is_verify_error or status is Status.EXCEEDS_LIMITS


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    original = draw(programs())
    code_start = len(original) - int.from_bytes(original[12:16], "little")
    base = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "opcode"]))
        if not base:
            break
        # Mostly aim past the 16-byte header: header damage is caught by the first checks,
        # while the interesting verifier paths (decode, jumps, depths) are in the code.
        lo = HEADER_SIZE if len(base) > HEADER_SIZE and draw(st.integers(0, 3)) else 0
        i = draw(st.integers(lo, len(base) - 1))
        if how == "flip":
            base[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "set":
            base[i] = draw(st.integers(0, 255))
        elif how == "insert":
            base.insert(i, draw(st.integers(0, 255)))
        elif how == "delete":
            del base[i]
        elif how == "truncate":
            del base[i:]
        else:
            base[i] = draw(st.sampled_from(OPS)).code
    if len(base) >= HEADER_SIZE and draw(st.booleans()):
        # Keep the header's code length consistent with an insert/delete/truncate, so the
        # shifted code reaches the decoder instead of stopping at TRUNCATED/TRAILING_BYTES.
        base[12:16] = max(0, len(base) - code_start).to_bytes(4, "little")
    return bytes(base)


@PROFILE
@given(data=mutated(), trigger=TRIGGERS, fuel=st.integers(0, MAX_FUEL))
def test_mutated_bytecode_never_crashes_and_agrees(
    data: bytes, trigger: vm.Trigger, fuel: int
) -> None:
    agree(data, trigger, fuel)


# Code bytes drawn mostly from real opcodes and small operands, so random code reaches the
# decoder, the jump checks and the depth analysis instead of stopping at the first byte.
CODE_BYTES = st.one_of(
    st.sampled_from([op.code for op in OPS]), st.integers(0, 20), st.integers(0, 255)
)


@st.composite
def random_programs(draw: st.DrawFn) -> bytes:
    code = bytes(draw(st.lists(CODE_BYTES, min_size=0, max_size=48)))
    consts = tuple(draw(st.lists(st.sampled_from([b"t", b"", b"\xc3\xa9", b"\xff"]), max_size=3)))
    return header(
        max_stack=draw(st.integers(0, 20)),
        n_locals=draw(st.integers(0, 9)),
        consts=consts,
        code=code,
    )


@PROFILE
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=96).map(lambda b: MAGIC + b"\x01\x00" + b),
        random_programs(),
        random_programs(),
    ),
    trigger=TRIGGERS,
    fuel=st.integers(0, MAX_FUEL),
)
def test_random_bytes_never_crash_and_agree(data: bytes, trigger: vm.Trigger, fuel: int) -> None:
    agree(data, trigger, fuel)


@settings(PROFILE, max_examples=100)
@given(fuel=st.integers(0, 5000), arg=st.integers(0, 10_000))
def test_every_run_ends_within_its_fuel(fuel: int, arg: int) -> None:
    spin = assemble("top: NOP\nJMP top")
    r = MACHINE.run(spin, vm.Trigger(0, 0), fuel)
    assert r.error is not None and r.error.status is Status.FUEL_EXHAUSTED
    assert r.fuel_used == fuel
    counted = assemble(
        ".local i\nLDT arg\nSTORE i\nt: LOAD i\nJZ e\nLOAD i\nPUSH 1\nSUB\nSTORE i\nJMP t\ne: HALT"
    )
    r = MACHINE.run(counted, vm.Trigger(0, 0, arg=arg), fuel)
    need = 2 + 7 * arg + 3
    assert r.fuel_used == min(need, fuel)
    assert r.ok == (need <= fuel)
