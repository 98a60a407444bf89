"""The glyph VM's instruction set, as Python data.

Mirrors `vm_zig/src/isa.zig` (the source of truth; `vm_zig/ISA.md` is the human page). The
binding in `vm.py` checks this table against the loaded library's at load time, so the assembler,
the reference model and the Zig VM cannot silently drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = b"GZVM"
VERSION = 1
HEADER_SIZE = 16
OFF_VERSION = 4
OFF_FLAGS = 5
OFF_MAX_STACK = 6
OFF_N_LOCALS = 8
OFF_N_CONSTS = 10
OFF_CODE_LEN = 12

CONSTS_MAX = 256
LOCALS_MAX = 256
CODE_LEN_MAX = 65535
STRING_LEN_MAX = 65535
FILE_LEN_MAX = HEADER_SIZE + CONSTS_MAX * (2 + STRING_LEN_MAX) + CODE_LEN_MAX
SYMBOL_COUNT = 64
ROTATION_COUNT = 4
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


class Operand(enum.IntEnum):
    NONE = 0
    IMM64 = 1
    CONST = 2
    LOCAL = 3
    FIELD = 4
    TARGET = 5
    CONST2 = 6

    @property
    def size(self) -> int:
        return _OPERAND_SIZE[self]


_OPERAND_SIZE = {
    Operand.NONE: 0,
    Operand.IMM64: 8,
    Operand.CONST: 1,
    Operand.LOCAL: 1,
    Operand.FIELD: 1,
    Operand.TARGET: 2,
    Operand.CONST2: 2,
}


@dataclass(frozen=True, slots=True)
class OpInfo:
    name: str
    code: int
    operand: Operand
    pops: int
    pushes: int

    @property
    def size(self) -> int:
        """Instruction length in bytes, opcode included."""
        return 1 + self.operand.size


_O = Operand
OPS: tuple[OpInfo, ...] = (
    OpInfo("NOP", 0x00, _O.NONE, 0, 0),
    OpInfo("HALT", 0x01, _O.NONE, 0, 0),
    OpInfo("PUSH", 0x02, _O.IMM64, 0, 1),
    OpInfo("POP", 0x03, _O.NONE, 1, 0),
    OpInfo("DUP", 0x04, _O.NONE, 1, 2),
    OpInfo("SWAP", 0x05, _O.NONE, 2, 2),
    OpInfo("OVER", 0x06, _O.NONE, 2, 3),
    OpInfo("ADD", 0x10, _O.NONE, 2, 1),
    OpInfo("SUB", 0x11, _O.NONE, 2, 1),
    OpInfo("MUL", 0x12, _O.NONE, 2, 1),
    OpInfo("DIV", 0x13, _O.NONE, 2, 1),
    OpInfo("MOD", 0x14, _O.NONE, 2, 1),
    OpInfo("NEG", 0x15, _O.NONE, 1, 1),
    OpInfo("AND", 0x16, _O.NONE, 2, 1),
    OpInfo("OR", 0x17, _O.NONE, 2, 1),
    OpInfo("XOR", 0x18, _O.NONE, 2, 1),
    OpInfo("EQ", 0x20, _O.NONE, 2, 1),
    OpInfo("NE", 0x21, _O.NONE, 2, 1),
    OpInfo("LT", 0x22, _O.NONE, 2, 1),
    OpInfo("LE", 0x23, _O.NONE, 2, 1),
    OpInfo("GT", 0x24, _O.NONE, 2, 1),
    OpInfo("GE", 0x25, _O.NONE, 2, 1),
    OpInfo("NOT", 0x26, _O.NONE, 1, 1),
    OpInfo("JMP", 0x30, _O.TARGET, 0, 0),
    OpInfo("JZ", 0x31, _O.TARGET, 1, 0),
    OpInfo("JNZ", 0x32, _O.TARGET, 1, 0),
    OpInfo("LOAD", 0x40, _O.LOCAL, 0, 1),
    OpInfo("STORE", 0x41, _O.LOCAL, 1, 0),
    OpInfo("LDT", 0x42, _O.FIELD, 0, 1),
    OpInfo("EMIT", 0x50, _O.CONST, 1, 0),
    OpInfo("EMITS", 0x51, _O.CONST2, 0, 0),
    OpInfo("MINT", 0x52, _O.NONE, 2, 0),
    OpInfo("GIFT", 0x53, _O.NONE, 3, 0),
    OpInfo("ASK", 0x54, _O.CONST, 1, 0),
    OpInfo("PROPOSE", 0x55, _O.CONST, 0, 0),
)
BY_NAME: dict[str, OpInfo] = {op.name: op for op in OPS}
BY_CODE: dict[int, OpInfo] = {op.code: op for op in OPS}

# Trigger fields readable by LDT, in operand order.
FIELDS: tuple[str, ...] = ("symbol", "rotation", "state", "actor", "node", "arg")


class Status(enum.IntEnum):
    """Status codes of the C ABI. 1..31 verifier (offset = byte offset in the file), 32..63 run
    time (pc = code offset), 64.. host misuse."""

    OK = 0
    TRUNCATED = 1
    BAD_MAGIC = 2
    BAD_VERSION = 3
    BAD_HEADER = 4
    EXCEEDS_LIMITS = 5
    BAD_STRING = 6
    TRAILING_BYTES = 7
    BAD_OPCODE = 8
    TRUNCATED_OPERAND = 9
    BAD_CONST = 10
    BAD_LOCAL = 11
    BAD_FIELD = 12
    BAD_JUMP = 13
    STACK_UNDERFLOW = 14
    STACK_OVERFLOW = 15
    DEPTH_MISMATCH = 16
    FALLS_OFF_END = 17
    FUEL_EXHAUSTED = 32
    DIV_BY_ZERO = 33
    OVERFLOW = 34
    EFFECTS_FULL = 35
    BAD_AMOUNT = 36
    BAD_ACTOR = 37
    BAD_PERSONA = 38
    BAD_TRIGGER = 39
    INVALID_ARGUMENT = 64

    @property
    def is_verify_error(self) -> bool:
        return 1 <= self.value < 32

    @property
    def reason(self) -> str:
        return REASONS.get(self, self.name.lower())


REASONS: dict[Status, str] = {
    Status.OK: "ok",
    Status.TRUNCATED: "file ends inside the header, a constant or the code section",
    Status.BAD_MAGIC: "not Gibsey VM bytecode (magic is not 'GZVM')",
    Status.BAD_VERSION: "unsupported bytecode version",
    Status.BAD_HEADER: "malformed header field",
    Status.EXCEEDS_LIMITS: "program needs more stack, locals or code than this VM was sized for",
    Status.BAD_STRING: "constant is not valid UTF-8",
    Status.TRAILING_BYTES: "bytes after the end of the code section",
    Status.BAD_OPCODE: "unknown opcode",
    Status.TRUNCATED_OPERAND: "instruction operand runs past the end of the code",
    Status.BAD_CONST: "constant index out of range",
    Status.BAD_LOCAL: "local index out of range",
    Status.BAD_FIELD: "unknown trigger field",
    Status.BAD_JUMP: "jump target outside the code or not on an instruction",
    Status.STACK_UNDERFLOW: "stack underflow reachable",
    Status.STACK_OVERFLOW: "stack deeper than the declared max_stack reachable",
    Status.DEPTH_MISMATCH: "paths reach this instruction with different stack depths",
    Status.FALLS_OFF_END: "execution can run past the last instruction (end with HALT or JMP)",
    Status.FUEL_EXHAUSTED: "instruction budget (fuel) exhausted",
    Status.DIV_BY_ZERO: "division by zero",
    Status.OVERFLOW: "64-bit integer overflow",
    Status.EFFECTS_FULL: "effect buffer full",
    Status.BAD_AMOUNT: "token amount must be positive",
    Status.BAD_ACTOR: "actor id must not be negative",
    Status.BAD_PERSONA: "persona must be a base symbol 0..63",
    Status.BAD_TRIGGER: "trigger symbol must be 0..63 and rotation 0..3",
    Status.INVALID_ARGUMENT: "invalid argument passed to the VM library",
}


def status_of(value: int) -> Status | int:
    """The Status for a raw code, or the raw int when a newer library returns an unknown one."""
    try:
        return Status(value)
    except ValueError:
        return value


class EffectKind(enum.IntEnum):
    EMIT = 1  # topic = s1, a = integer payload
    EMITS = 2  # topic = s1, s2 = string payload
    MINT = 3  # a = actor, b = amount
    GIFT = 4  # a = from, b = to, c = amount
    ASK = 5  # a = persona, s1 = prompt
    PROPOSE = 6  # s1 = branch name


class Trigger(NamedTuple):
    """The event that runs a program (the Zig VM's and the reference model's). Actors and nodes
    are small integer ids the host maps to names (the VM only passes them through into
    effects). A NamedTuple, not a frozen dataclass: one is made per rotation, and a frozen
    dataclass costs 0.5 us to build against 0.15."""

    symbol: int
    rotation: int
    actor: int = 0
    node: int = 0
    arg: int = 0

    @property
    def state(self) -> int:
        """The QDPI-256 byte: symbol * 4 + rotation."""
        return self.symbol * ROTATION_COUNT + self.rotation
