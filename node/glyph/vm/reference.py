"""A reference model of the glyph VM in plain Python.

Written for clarity, not speed, straight from `vm_zig/ISA.md`: the tests run generated programs on
it and on the Zig VM and require identical outcomes (status, pc or offset, fuel used, effects, final
stack and locals), and the benchmark uses it as the "same program in Python" baseline. The
assembler borrows `verify` to compute a program's maximum stack depth.

The verifier follows the Zig verifier's check order exactly, so the first error and its offset
agree too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gibsey.node.glyph.vm import isa
from gibsey.node.glyph.vm.isa import Status

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
class Verdict:
    status: Status
    offset: int
    program: Program | None


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "little")


def verify(data: bytes, limits: Limits = Limits()) -> Verdict:
    def fail(status: Status, offset: int) -> Verdict:
        return Verdict(status, offset, None)

    n = len(data)
    if n > isa.FILE_LEN_MAX:
        return fail(Status.EXCEEDS_LIMITS, 0)
    if n < isa.HEADER_SIZE:
        return fail(Status.TRUNCATED, 0)
    if data[:4] != isa.MAGIC:
        return fail(Status.BAD_MAGIC, 0)
    if data[isa.OFF_VERSION] != isa.VERSION:
        return fail(Status.BAD_VERSION, isa.OFF_VERSION)
    if data[isa.OFF_FLAGS] != 0:
        return fail(Status.BAD_HEADER, isa.OFF_FLAGS)
    max_stack = _u16(data, isa.OFF_MAX_STACK)
    n_locals = _u16(data, isa.OFF_N_LOCALS)
    n_consts = _u16(data, isa.OFF_N_CONSTS)
    code_len = int.from_bytes(data[isa.OFF_CODE_LEN : isa.OFF_CODE_LEN + 4], "little")
    if n_locals > isa.LOCALS_MAX:
        return fail(Status.BAD_HEADER, isa.OFF_N_LOCALS)
    if n_consts > isa.CONSTS_MAX:
        return fail(Status.BAD_HEADER, isa.OFF_N_CONSTS)
    if max_stack > limits.stack_cap:
        return fail(Status.EXCEEDS_LIMITS, isa.OFF_MAX_STACK)
    if n_locals > limits.locals_cap:
        return fail(Status.EXCEEDS_LIMITS, isa.OFF_N_LOCALS)
    if code_len > limits.code_cap or code_len > isa.CODE_LEN_MAX:
        return fail(Status.EXCEEDS_LIMITS, isa.OFF_CODE_LEN)

    consts: list[tuple[int, int]] = []
    off = isa.HEADER_SIZE
    for _ in range(n_consts):
        if n - off < 2:
            return fail(Status.TRUNCATED, off)
        slen = _u16(data, off)
        if n - off - 2 < slen:
            return fail(Status.TRUNCATED, off)
        try:
            data[off + 2 : off + 2 + slen].decode("utf-8")
        except UnicodeDecodeError:
            return fail(Status.BAD_STRING, off)
        consts.append((off + 2, slen))
        off += 2 + slen
    cs = off
    if n - cs < code_len:
        return fail(Status.TRUNCATED, cs)
    if n - cs > code_len:
        return fail(Status.TRAILING_BYTES, cs + code_len)
    if code_len == 0:
        return fail(Status.FALLS_OFF_END, cs)
    code = data[cs:]

    # Pass 1: linear decode.
    boundary = [False] * code_len
    pc = 0
    while pc < code_len:
        info = isa.BY_CODE.get(code[pc])
        if info is None:
            return fail(Status.BAD_OPCODE, cs + pc)
        if code_len - pc - 1 < info.operand.size:
            return fail(Status.TRUNCATED_OPERAND, cs + pc)
        boundary[pc] = True
        kind = info.operand
        if kind is isa.Operand.CONST and code[pc + 1] >= n_consts:
            return fail(Status.BAD_CONST, cs + pc)
        if kind is isa.Operand.CONST2 and (code[pc + 1] >= n_consts or code[pc + 2] >= n_consts):
            return fail(Status.BAD_CONST, cs + pc)
        if kind is isa.Operand.LOCAL and code[pc + 1] >= n_locals:
            return fail(Status.BAD_LOCAL, cs + pc)
        if kind is isa.Operand.FIELD and code[pc + 1] >= len(isa.FIELDS):
            return fail(Status.BAD_FIELD, cs + pc)
        pc += info.size

    # Pass 2: jump targets.
    pc = 0
    while pc < code_len:
        info = isa.BY_CODE[code[pc]]
        if info.operand is isa.Operand.TARGET:
            target = _u16(code, pc + 1)
            if target >= code_len or not boundary[target]:
                return fail(Status.BAD_JUMP, cs + pc)
        pc += info.size

    # Pass 3: stack depths; LIFO worklist, successors in order (fallthrough, target).
    depth = [_UNSEEN] * code_len
    depth_after = [_UNSEEN] * code_len
    depth[0] = 0
    work = [0]
    while work:
        pc = work.pop()
        info = isa.BY_CODE[code[pc]]
        d_in = depth[pc]
        if d_in < info.pops:
            return fail(Status.STACK_UNDERFLOW, cs + pc)
        d_out = d_in - info.pops + info.pushes
        if d_out > max_stack:
            return fail(Status.STACK_OVERFLOW, cs + pc)
        depth_after[pc] = d_out
        nxt = pc + info.size
        if info.name == "HALT":
            succ: tuple[int, ...] = ()
        elif info.name == "JMP":
            succ = (_u16(code, pc + 1),)
        elif info.name in ("JZ", "JNZ"):
            succ = (nxt, _u16(code, pc + 1))
        else:
            succ = (nxt,)
        for to in succ:
            if to == code_len:
                return fail(Status.FALLS_OFF_END, cs + pc)
            if depth[to] == _UNSEEN:
                depth[to] = d_out
                work.append(to)
            elif depth[to] != d_out:
                return fail(Status.DEPTH_MISMATCH, cs + to)

    program = Program(max_stack, n_locals, consts, cs, code_len, depth, depth_after)
    return Verdict(Status.OK, 0, program)


@dataclass(frozen=True, slots=True)
class Trigger:
    symbol: int
    rotation: int
    actor: int = 0
    node: int = 0
    arg: int = 0


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


def _in_i64(v: int) -> bool:
    return isa.I64_MIN <= v <= isa.I64_MAX


def _div_trunc(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def run(data: bytes, trigger: Trigger, fuel: int, limits: Limits = Limits()) -> Outcome:
    verdict = verify(data, limits)
    if verdict.status is not Status.OK or verdict.program is None:
        return Outcome(verdict.status, offset=verdict.offset)
    prog = verdict.program
    if not (0 <= trigger.symbol < isa.SYMBOLS and 0 <= trigger.rotation < isa.ROTATIONS):
        return Outcome(Status.BAD_TRIGGER, locals=[0] * prog.n_locals)
    code = data[prog.code_start :]
    fields = (
        trigger.symbol,
        trigger.rotation,
        trigger.symbol * 4 + trigger.rotation,
        trigger.actor,
        trigger.node,
        trigger.arg,
    )
    stack: list[int] = []
    local = [0] * prog.n_locals
    effects: list[RawEffect] = []
    pc = 0
    used = 0

    def done(status: Status) -> Outcome:
        return Outcome(status, pc, 0, used, effects, stack, local)

    while True:
        if used == fuel:
            return done(Status.FUEL_EXHAUSTED)
        used += 1
        info = isa.BY_CODE[code[pc]]
        name = info.name
        nxt = pc + info.size
        arg1 = code[pc + 1] if info.operand.size else 0
        if name == "NOP":
            pass
        elif name == "HALT":
            return done(Status.OK)
        elif name == "PUSH":
            stack.append(int.from_bytes(code[pc + 1 : pc + 9], "little", signed=True))
        elif name == "POP":
            stack.pop()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "SWAP":
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif name == "OVER":
            stack.append(stack[-2])
        elif name in ("ADD", "SUB", "MUL", "DIV", "MOD", "AND", "OR", "XOR"):
            a, b = stack[-2], stack[-1]
            if name == "ADD":
                r = a + b
            elif name == "SUB":
                r = a - b
            elif name == "MUL":
                r = a * b
            elif name == "DIV":
                if b == 0:
                    return done(Status.DIV_BY_ZERO)
                r = _div_trunc(a, b)
            elif name == "MOD":
                if b == 0:
                    return done(Status.DIV_BY_ZERO)
                r = a - b * _div_trunc(a, b)
            elif name == "AND":
                r = a & b
            elif name == "OR":
                r = a | b
            else:
                r = a ^ b
            if not _in_i64(r):
                return done(Status.OVERFLOW)
            stack[-2:] = [r]
        elif name == "NEG":
            if stack[-1] == isa.I64_MIN:
                return done(Status.OVERFLOW)
            stack[-1] = -stack[-1]
        elif name in ("EQ", "NE", "LT", "LE", "GT", "GE"):
            a, b = stack[-2], stack[-1]
            truth = {
                "EQ": a == b,
                "NE": a != b,
                "LT": a < b,
                "LE": a <= b,
                "GT": a > b,
                "GE": a >= b,
            }[name]
            stack[-2:] = [int(truth)]
        elif name == "NOT":
            stack[-1] = int(stack[-1] == 0)
        elif name == "JMP":
            pc = _u16(code, pc + 1)
            continue
        elif name in ("JZ", "JNZ"):
            v = stack.pop()
            if (v == 0) == (name == "JZ"):
                pc = _u16(code, pc + 1)
                continue
        elif name == "LOAD":
            stack.append(local[arg1])
        elif name == "STORE":
            local[arg1] = stack.pop()
        elif name == "LDT":
            stack.append(fields[arg1])
        else:
            # Effects: argument checks, then capacity, then the state change.
            eff: RawEffect
            if name == "EMIT":
                so, sl = prog.consts[arg1]
                eff = (isa.EffectKind.EMIT, pc, stack[-1], 0, 0, so, sl, 0, 0)
                npop = 1
            elif name == "EMITS":
                so, sl = prog.consts[arg1]
                so2, sl2 = prog.consts[code[pc + 2]]
                eff = (isa.EffectKind.EMITS, pc, 0, 0, 0, so, sl, so2, sl2)
                npop = 0
            elif name == "MINT":
                actor, amount = stack[-2], stack[-1]
                if actor < 0:
                    return done(Status.BAD_ACTOR)
                if amount <= 0:
                    return done(Status.BAD_AMOUNT)
                eff = (isa.EffectKind.MINT, pc, actor, amount, 0, 0, 0, 0, 0)
                npop = 2
            elif name == "GIFT":
                frm, to, amount = stack[-3], stack[-2], stack[-1]
                if frm < 0 or to < 0:
                    return done(Status.BAD_ACTOR)
                if amount <= 0:
                    return done(Status.BAD_AMOUNT)
                eff = (isa.EffectKind.GIFT, pc, frm, to, amount, 0, 0, 0, 0)
                npop = 3
            elif name == "ASK":
                persona = stack[-1]
                if not 0 <= persona < isa.SYMBOLS:
                    return done(Status.BAD_PERSONA)
                so, sl = prog.consts[arg1]
                eff = (isa.EffectKind.ASK, pc, persona, 0, 0, so, sl, 0, 0)
                npop = 1
            elif name == "PROPOSE":
                so, sl = prog.consts[arg1]
                eff = (isa.EffectKind.PROPOSE, pc, 0, 0, 0, so, sl, 0, 0)
                npop = 0
            else:  # pragma: no cover - the verifier rejected every other byte
                raise AssertionError(f"unverified opcode {name}")
            if len(effects) == limits.effects_cap:
                return done(Status.EFFECTS_FULL)
            effects.append(eff)
            if npop:
                del stack[-npop:]
        pc = nxt
