"""A reference model of the glyph VM in plain Python.

Written for clarity, not speed, straight from `vm_zig/ISA.md`: the tests run generated programs on
it and on the Zig VM and require identical outcomes (status, pc or offset, fuel used, effects, final
stack and locals), and the benchmark uses it as the "same program in Python" baseline. The
assembler borrows `verify` to compute a program's maximum stack depth.

The verifier follows the Zig verifier's check order exactly, so the first error and its offset
agree too. The interpreter decodes each instruction from the ISA table and hands it to the function
for its family (stack, arithmetic, comparison, jumps, variables, effects).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from gibsey.node.glyph.vm import isa
from gibsey.node.glyph.vm.isa import Status, Trigger

_UNSEEN = -1


@dataclass(frozen=True, slots=True)
class Limits:
    stack_cap: int = 256
    locals_cap: int = 64
    code_cap: int = 4096
    effects_cap: int = 64


@dataclass(slots=True)
class Program:
    max_stack: int
    n_locals: int
    consts: list[tuple[int, int]]  # (file offset, length) of each string
    code_start: int
    code_len: int
    # Stack depth on entry to each reachable instruction (-1 where unreachable).
    depth: list[int] = field(default_factory=list)
    # Stack depth after each reachable instruction (-1 where unreachable).
    depth_after: list[int] = field(default_factory=list)

    @property
    def max_depth(self) -> int:
        """Deepest stack any reachable instruction leaves behind (at least 0)."""
        return max([0, *self.depth_after])


@dataclass(frozen=True, slots=True)
class VerifyVerdict:
    status: Status
    offset: int
    program: Program | None


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "little")


# --- The verifier ---------------------------------------------------------------------------------


class _Rejected(Exception):
    """The verifier's first error: raised by the check that found it, caught by `verify`."""

    def __init__(self, status: Status, offset: int) -> None:
        super().__init__(status, offset)
        self.status = status
        self.offset = offset


class _Header(NamedTuple):
    max_stack: int
    n_locals: int
    n_consts: int
    code_len: int


def verify(data: bytes, limits: Limits = Limits()) -> VerifyVerdict:
    try:
        program = _verified(data, limits)
    except _Rejected as rejected:
        return VerifyVerdict(rejected.status, rejected.offset, None)
    return VerifyVerdict(Status.OK, 0, program)


def _verified(data: bytes, limits: Limits) -> Program:
    """The checked program, in the Zig verifier's order: header, constants, section sizes, then
    three passes over the code (decode, jump targets, stack depths)."""
    head = _check_header(data, limits)
    consts, cs = _check_consts(data, head.n_consts)
    n, code_len = len(data), head.code_len
    if n - cs < code_len:
        raise _Rejected(Status.TRUNCATED, cs)
    if n - cs > code_len:
        raise _Rejected(Status.TRAILING_BYTES, cs + code_len)
    if code_len == 0:
        raise _Rejected(Status.FALLS_OFF_END, cs)
    code = data[cs:]
    boundary = _decode_pass(code, cs, head)
    _jump_pass(code, cs, boundary)
    depth, depth_after = _depth_pass(code, cs, head.max_stack)
    return Program(head.max_stack, head.n_locals, consts, cs, code_len, depth, depth_after)


def _check_header(data: bytes, limits: Limits) -> _Header:
    n = len(data)
    if n > isa.FILE_LEN_MAX:
        raise _Rejected(Status.EXCEEDS_LIMITS, 0)
    if n < isa.HEADER_SIZE:
        raise _Rejected(Status.TRUNCATED, 0)
    if data[:4] != isa.MAGIC:
        raise _Rejected(Status.BAD_MAGIC, 0)
    if data[isa.OFF_VERSION] != isa.VERSION:
        raise _Rejected(Status.BAD_VERSION, isa.OFF_VERSION)
    if data[isa.OFF_FLAGS] != 0:
        raise _Rejected(Status.BAD_HEADER, isa.OFF_FLAGS)
    head = _Header(
        max_stack=_u16(data, isa.OFF_MAX_STACK),
        n_locals=_u16(data, isa.OFF_N_LOCALS),
        n_consts=_u16(data, isa.OFF_N_CONSTS),
        code_len=int.from_bytes(data[isa.OFF_CODE_LEN : isa.OFF_CODE_LEN + 4], "little"),
    )
    if head.n_locals > isa.LOCALS_MAX:
        raise _Rejected(Status.BAD_HEADER, isa.OFF_N_LOCALS)
    if head.n_consts > isa.CONSTS_MAX:
        raise _Rejected(Status.BAD_HEADER, isa.OFF_N_CONSTS)
    if head.max_stack > limits.stack_cap:
        raise _Rejected(Status.EXCEEDS_LIMITS, isa.OFF_MAX_STACK)
    if head.n_locals > limits.locals_cap:
        raise _Rejected(Status.EXCEEDS_LIMITS, isa.OFF_N_LOCALS)
    if head.code_len > limits.code_cap or head.code_len > isa.CODE_LEN_MAX:
        raise _Rejected(Status.EXCEEDS_LIMITS, isa.OFF_CODE_LEN)
    return head


def _check_consts(data: bytes, n_consts: int) -> tuple[list[tuple[int, int]], int]:
    """(file offset, length) of each UTF-8 constant, and the code section's file offset."""
    n = len(data)
    consts: list[tuple[int, int]] = []
    off = isa.HEADER_SIZE
    for _ in range(n_consts):
        if n - off < 2:
            raise _Rejected(Status.TRUNCATED, off)
        slen = _u16(data, off)
        if n - off - 2 < slen:
            raise _Rejected(Status.TRUNCATED, off)
        try:
            data[off + 2 : off + 2 + slen].decode("utf-8")
        except UnicodeDecodeError:
            raise _Rejected(Status.BAD_STRING, off) from None
        consts.append((off + 2, slen))
        off += 2 + slen
    return consts, off


def _decode_pass(code: bytes, cs: int, head: _Header) -> list[bool]:
    """Pass 1, linear decode: opcodes and operand indices; where each instruction starts."""
    code_len, n_consts = head.code_len, head.n_consts
    boundary = [False] * code_len
    pc = 0
    while pc < code_len:
        info = isa.BY_CODE.get(code[pc])
        if info is None:
            raise _Rejected(Status.BAD_OPCODE, cs + pc)
        if code_len - pc - 1 < info.operand.size:
            raise _Rejected(Status.TRUNCATED_OPERAND, cs + pc)
        boundary[pc] = True
        kind = info.operand
        if kind is isa.Operand.CONST and code[pc + 1] >= n_consts:
            raise _Rejected(Status.BAD_CONST, cs + pc)
        if kind is isa.Operand.CONST2 and (code[pc + 1] >= n_consts or code[pc + 2] >= n_consts):
            raise _Rejected(Status.BAD_CONST, cs + pc)
        if kind is isa.Operand.LOCAL and code[pc + 1] >= head.n_locals:
            raise _Rejected(Status.BAD_LOCAL, cs + pc)
        if kind is isa.Operand.FIELD and code[pc + 1] >= len(isa.FIELDS):
            raise _Rejected(Status.BAD_FIELD, cs + pc)
        pc += info.size
    return boundary


def _jump_pass(code: bytes, cs: int, boundary: list[bool]) -> None:
    """Pass 2: every jump lands on an instruction inside the code."""
    code_len = len(boundary)
    pc = 0
    while pc < code_len:
        info = isa.BY_CODE[code[pc]]
        if info.operand is isa.Operand.TARGET:
            target = _u16(code, pc + 1)
            if target >= code_len or not boundary[target]:
                raise _Rejected(Status.BAD_JUMP, cs + pc)
        pc += info.size


def _successors(info: isa.OpInfo, code: bytes, pc: int) -> tuple[int, ...]:
    """Where control goes after the instruction at `pc`, in order (fallthrough, target)."""
    nxt = pc + info.size
    if info.name == "HALT":
        return ()
    if info.name == "JMP":
        return (_u16(code, pc + 1),)
    if info.name in ("JZ", "JNZ"):
        return (nxt, _u16(code, pc + 1))
    return (nxt,)


def _depth_pass(code: bytes, cs: int, max_stack: int) -> tuple[list[int], list[int]]:
    """Pass 3: stack depth on entry to and after each reachable instruction; LIFO worklist,
    successors in order (fallthrough, target)."""
    code_len = len(code)
    depth = [_UNSEEN] * code_len
    depth_after = [_UNSEEN] * code_len
    depth[0] = 0
    work = [0]
    while work:
        pc = work.pop()
        info = isa.BY_CODE[code[pc]]
        d_in = depth[pc]
        if d_in < info.pops:
            raise _Rejected(Status.STACK_UNDERFLOW, cs + pc)
        d_out = d_in - info.pops + info.pushes
        if d_out > max_stack:
            raise _Rejected(Status.STACK_OVERFLOW, cs + pc)
        depth_after[pc] = d_out
        for to in _successors(info, code, pc):
            if to == code_len:
                raise _Rejected(Status.FALLS_OFF_END, cs + pc)
            if depth[to] == _UNSEEN:
                depth[to] = d_out
                work.append(to)
            elif depth[to] != d_out:
                raise _Rejected(Status.DEPTH_MISMATCH, cs + to)
    return depth, depth_after


# --- The interpreter ------------------------------------------------------------------------------


# (kind, pc, a, b, c, s1_off, s1_len, s2_off, s2_len): the Zig Effect struct, field for field.
RawEffect = tuple[int, int, int, int, int, int, int, int, int]


@dataclass(slots=True)
class Outcome:
    status: Status
    pc: int = 0
    offset: int = 0
    fuel_used: int = 0
    effects: list[RawEffect] = field(default_factory=list)
    stack: list[int] = field(default_factory=list)
    locals: list[int] = field(default_factory=list)


class _Stopped(Exception):
    """Ends a run at the current instruction: HALT (with OK) or a run-time error. Every run ends
    with one, so it is the bare exception (args = (status,)): the benchmark times short runs."""

    @property
    def status(self) -> Status:
        status: Status = self.args[0]
        return status


@dataclass(slots=True)
class _Machine:
    """What the instructions read and change; the pc and the fuel stay in `run`'s loop."""

    code: bytes
    consts: list[tuple[int, int]]
    fields: tuple[int, ...]  # the trigger, in isa.FIELDS order
    effects_cap: int
    stack: list[int] = field(default_factory=list)
    local: list[int] = field(default_factory=list)
    effects: list[RawEffect] = field(default_factory=list)


# A family of instructions: runs the instruction `name` at `pc` (`nxt` is the pc after it, `arg` its
# first operand byte or 0) and returns the pc to run next, or raises _Stopped.
_Family = Callable[[_Machine, str, int, int, int], int]


def run(data: bytes, trigger: Trigger, fuel: int, limits: Limits = Limits()) -> Outcome:
    verdict = verify(data, limits)
    if verdict.status is not Status.OK or verdict.program is None:
        return Outcome(verdict.status, offset=verdict.offset)
    prog = verdict.program
    if not (0 <= trigger.symbol < isa.SYMBOL_COUNT and 0 <= trigger.rotation < isa.ROTATION_COUNT):
        return Outcome(Status.BAD_TRIGGER, locals=[0] * prog.n_locals)
    fields = (
        trigger.symbol,
        trigger.rotation,
        trigger.symbol * 4 + trigger.rotation,
        trigger.actor,
        trigger.node,
        trigger.arg,
    )
    m = _Machine(
        data[prog.code_start :], prog.consts, fields, limits.effects_cap, local=[0] * prog.n_locals
    )
    code = m.code
    pc = 0
    used = 0
    try:
        while used != fuel:
            used += 1
            info = isa.BY_CODE[code[pc]]
            name = info.name
            arg = code[pc + 1] if info.operand.size else 0
            # When the instruction raises, `pc` keeps its address: the Outcome's pc.
            pc = _FAMILY_OF[name](m, name, pc, pc + info.size, arg)
        status = Status.FUEL_EXHAUSTED
    except _Stopped as stopped:
        status = stopped.status
    return Outcome(status, pc, 0, used, m.effects, m.stack, m.local)


def _stack_op(m: _Machine, name: str, pc: int, nxt: int, arg: int) -> int:
    stack = m.stack
    if name == "HALT":
        raise _Stopped(Status.OK)
    if name == "PUSH":
        stack.append(int.from_bytes(m.code[pc + 1 : nxt], "little", signed=True))
    elif name == "POP":
        stack.pop()
    elif name == "DUP":
        stack.append(stack[-1])
    elif name == "SWAP":
        stack[-1], stack[-2] = stack[-2], stack[-1]
    elif name == "OVER":
        stack.append(stack[-2])
    return nxt  # NOP included


def _variable_op(m: _Machine, name: str, pc: int, nxt: int, arg: int) -> int:
    if name == "LOAD":
        m.stack.append(m.local[arg])
    elif name == "STORE":
        m.local[arg] = m.stack.pop()
    else:  # LDT
        m.stack.append(m.fields[arg])
    return nxt


def _jump_op(m: _Machine, name: str, pc: int, nxt: int, arg: int) -> int:
    if name == "JMP":
        return _u16(m.code, pc + 1)
    taken = (m.stack.pop() == 0) == (name == "JZ")
    return _u16(m.code, pc + 1) if taken else nxt


def _in_i64(v: int) -> bool:
    return isa.I64_MIN <= v <= isa.I64_MAX


def _div_trunc(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def _div(a: int, b: int) -> int:
    if b == 0:
        raise _Stopped(Status.DIV_BY_ZERO)
    return _div_trunc(a, b)


def _mod(a: int, b: int) -> int:
    if b == 0:
        raise _Stopped(Status.DIV_BY_ZERO)
    return a - b * _div_trunc(a, b)


_BINARY: dict[str, Callable[[int, int], int]] = {
    "ADD": operator.add,
    "SUB": operator.sub,
    "MUL": operator.mul,
    "DIV": _div,
    "MOD": _mod,
    "AND": operator.and_,
    "OR": operator.or_,
    "XOR": operator.xor,
}


def _arithmetic_op(m: _Machine, name: str, pc: int, nxt: int, arg: int) -> int:
    stack = m.stack
    if name == "NEG":
        if stack[-1] == isa.I64_MIN:
            raise _Stopped(Status.OVERFLOW)
        stack[-1] = -stack[-1]
        return nxt
    r = _BINARY[name](stack[-2], stack[-1])
    if not _in_i64(r):
        raise _Stopped(Status.OVERFLOW)
    stack[-2:] = [r]
    return nxt


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "EQ": operator.eq,
    "NE": operator.ne,
    "LT": operator.lt,
    "LE": operator.le,
    "GT": operator.gt,
    "GE": operator.ge,
}


def _comparison_op(m: _Machine, name: str, pc: int, nxt: int, arg: int) -> int:
    stack = m.stack
    if name == "NOT":
        stack[-1] = int(stack[-1] == 0)
    else:
        stack[-2:] = [int(_COMPARE[name](stack[-2], stack[-1]))]
    return nxt


# Effects: each function checks its arguments and returns the effect and how many values it pops;
# `_effect_op` then checks capacity and makes the state change, in the Zig VM's order.


def _emit(m: _Machine, pc: int, arg: int) -> tuple[RawEffect, int]:
    so, sl = m.consts[arg]
    return (isa.EffectKind.EMIT, pc, m.stack[-1], 0, 0, so, sl, 0, 0), 1


def _emits(m: _Machine, pc: int, arg: int) -> tuple[RawEffect, int]:
    so, sl = m.consts[arg]
    so2, sl2 = m.consts[m.code[pc + 2]]
    return (isa.EffectKind.EMITS, pc, 0, 0, 0, so, sl, so2, sl2), 0


def _mint(m: _Machine, pc: int, arg: int) -> tuple[RawEffect, int]:
    actor, amount = m.stack[-2], m.stack[-1]
    if actor < 0:
        raise _Stopped(Status.BAD_ACTOR)
    if amount <= 0:
        raise _Stopped(Status.BAD_AMOUNT)
    return (isa.EffectKind.MINT, pc, actor, amount, 0, 0, 0, 0, 0), 2


def _gift(m: _Machine, pc: int, arg: int) -> tuple[RawEffect, int]:
    frm, to, amount = m.stack[-3], m.stack[-2], m.stack[-1]
    if frm < 0 or to < 0:
        raise _Stopped(Status.BAD_ACTOR)
    if amount <= 0:
        raise _Stopped(Status.BAD_AMOUNT)
    return (isa.EffectKind.GIFT, pc, frm, to, amount, 0, 0, 0, 0), 3


def _ask(m: _Machine, pc: int, arg: int) -> tuple[RawEffect, int]:
    persona = m.stack[-1]
    if not 0 <= persona < isa.SYMBOL_COUNT:
        raise _Stopped(Status.BAD_PERSONA)
    so, sl = m.consts[arg]
    return (isa.EffectKind.ASK, pc, persona, 0, 0, so, sl, 0, 0), 1


def _propose(m: _Machine, pc: int, arg: int) -> tuple[RawEffect, int]:
    so, sl = m.consts[arg]
    return (isa.EffectKind.PROPOSE, pc, 0, 0, 0, so, sl, 0, 0), 0


_EFFECTS: dict[str, Callable[[_Machine, int, int], tuple[RawEffect, int]]] = {
    "EMIT": _emit,
    "EMITS": _emits,
    "MINT": _mint,
    "GIFT": _gift,
    "ASK": _ask,
    "PROPOSE": _propose,
}


def _effect_op(m: _Machine, name: str, pc: int, nxt: int, arg: int) -> int:
    effect, pops = _EFFECTS[name](m, pc, arg)
    if len(m.effects) == m.effects_cap:
        raise _Stopped(Status.EFFECTS_FULL)
    m.effects.append(effect)
    if pops:
        del m.stack[-pops:]
    return nxt


_FAMILIES: dict[_Family, tuple[str, ...]] = {
    _stack_op: ("NOP", "HALT", "PUSH", "POP", "DUP", "SWAP", "OVER"),
    _arithmetic_op: ("NEG", *_BINARY),
    _comparison_op: ("NOT", *_COMPARE),
    _jump_op: ("JMP", "JZ", "JNZ"),
    _variable_op: ("LOAD", "STORE", "LDT"),
    _effect_op: tuple(_EFFECTS),
}
# Opcode name -> its family. The verifier admits only the opcodes of isa.OPS; the assert keeps this
# table and the ISA's in step.
_FAMILY_OF: dict[str, _Family] = {name: f for f, names in _FAMILIES.items() for name in names}
assert _FAMILY_OF.keys() == isa.BY_NAME.keys(), "the reference model must cover the ISA exactly"
