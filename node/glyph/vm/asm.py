"""Assembler and disassembler for the glyph VM, so an artist can write a glyph's program as text.

Text format (`.gasm`), one instruction per line; see vm_zig/ISA.md for every mnemonic:

    ; a comment (also `#`)
    .local count            ; name the next local (LOAD count / STORE count); numbers work too
    .stack 8                ; optional: declared max stack depth (default: computed)
    .locals 4               ; optional: number of locals (default: as many as used)
    .const "text"           ; optional: append a string to the constant pool explicitly
    loop:                   ; a label (jump target); may share a line with an instruction
        LDT symbol          ; trigger fields: symbol rotation state actor node arg
        PUSH -12            ; integers: decimal, 0x.., 0b.., with optional _ separators
        EMIT "glyph/chime"  ; strings: double quotes, Python escapes (\\n, \\", \\u00e9 ...)
        EMIT $0             ; or a constant by pool index
        JNZ loop

Identical string literals share one constant. The assembled program is checked with the verifier
before it is returned, and errors name the line. `disassemble` prints text that assembles back to
the identical bytes.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from gibsey.node.glyph.vm import isa
from gibsey.node.glyph.vm import reference as ref
from gibsey.node.glyph.vm.isa import Operand, Status

__all__ = ["AsmError", "DisasmError", "assemble", "disassemble", "is_bytecode"]

# Structural limits only; the VM a program is loaded into may be sized smaller.
_ASM_LIMITS = ref.Limits(
    stack_cap=65535, locals_cap=isa.LOCALS_MAX, code_cap=isa.CODE_LEN_MAX, effects_cap=1
)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s"]+')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


class AsmError(ValueError):
    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


class DisasmError(ValueError):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"byte {offset}: {message}")
        self.offset = offset
        self.message = message


def is_bytecode(data: bytes) -> bool:
    return data.startswith(isa.MAGIC)


def _strip_comment(line: str) -> tuple[str, bool]:
    """The line without its comment, and whether every string literal was closed."""
    in_string = False
    escaped = False
    for i, ch in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in ";#":
            return line[:i], True
    return line, not in_string


@dataclass(slots=True)
class _Instr:
    line: int
    op: isa.OpInfo
    args: list[str]
    pc: int = 0


class _Assembler:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.consts: list[str] = []
        self.const_index: dict[str, int] = {}
        self.local_names: dict[str, int] = {}
        self.locals_used = 0
        self.labels: dict[str, int] = {}
        self.instrs: list[_Instr] = []
        self.stack: int | None = None
        self.n_locals: int | None = None
        self.line = 0

    def error(self, message: str, line: int | None = None) -> AsmError:
        return AsmError(self.filename, self.line if line is None else line, message)

    # --- operand parsing ---------------------------------------------------------------------

    def integer(self, tok: str, lo: int, hi: int, what: str) -> int:
        try:
            value = int(tok, 0)
        except ValueError:
            raise self.error(f"{what}: expected an integer, got {tok!r}") from None
        if not lo <= value <= hi:
            raise self.error(f"{what} {value} out of range {lo}..{hi}")
        return value

    def string(self, tok: str) -> str:
        try:
            value = ast.literal_eval(tok)
        except (ValueError, SyntaxError):
            raise self.error(f"bad string literal {tok}") from None
        if not isinstance(value, str):
            raise self.error(f"bad string literal {tok}")
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error(f"string {tok} is not encodable as UTF-8") from None
        if len(encoded) > isa.STRING_LEN_MAX:
            raise self.error(f"string longer than {isa.STRING_LEN_MAX} bytes")
        return value

    def add_const(self, value: str, *, share: bool) -> int:
        if share and value in self.const_index:
            return self.const_index[value]
        if len(self.consts) >= isa.CONSTS_MAX:
            raise self.error(f"more than {isa.CONSTS_MAX} constants")
        self.consts.append(value)
        self.const_index.setdefault(value, len(self.consts) - 1)
        return len(self.consts) - 1

    def constant(self, tok: str) -> int:
        if tok.startswith('"'):
            return self.add_const(self.string(tok), share=True)
        if tok.startswith("$"):
            return self.integer(tok[1:], 0, isa.CONSTS_MAX - 1, "constant index")
        raise self.error(f'expected a string "..." or a constant index $N, got {tok!r}')

    def local(self, tok: str) -> int:
        if tok in self.local_names:
            return self.local_names[tok]
        if _NAME.match(tok):
            raise self.error(f"unknown local {tok!r} (declare it with `.local {tok}`)")
        return self.integer(tok, 0, isa.LOCALS_MAX - 1, "local index")

    def field(self, tok: str) -> int:
        if tok.lower() in isa.FIELDS:
            return isa.FIELDS.index(tok.lower())
        if _NAME.match(tok):
            raise self.error(f"unknown trigger field {tok!r}; one of {', '.join(isa.FIELDS)}")
        return self.integer(tok, 0, 255, "field")

    def target(self, tok: str) -> int:
        if tok in self.labels:
            return self.labels[tok]
        if _NAME.match(tok):
            raise self.error(f"unknown label {tok!r}")
        return self.integer(tok, 0, 0xFFFF, "jump target")

    # --- passes --------------------------------------------------------------------------------

    def directive(self, name: str, args: list[str]) -> None:
        def one() -> str:
            if len(args) != 1:
                raise self.error(f"{name} takes one argument")
            return args[0]

        if name == ".stack":
            self.stack = self.integer(one(), 0, 65535, ".stack")
        elif name == ".locals":
            self.n_locals = self.integer(one(), 0, isa.LOCALS_MAX, ".locals")
        elif name == ".local":
            local_name = one()
            if not _NAME.match(local_name) or local_name.lower() in isa.FIELDS:
                raise self.error(f"bad local name {local_name!r}")
            if local_name in self.local_names:
                raise self.error(f"local {local_name!r} declared twice")
            if len(self.local_names) >= isa.LOCALS_MAX:
                raise self.error(f"more than {isa.LOCALS_MAX} locals")
            self.local_names[local_name] = len(self.local_names)
        elif name == ".const":
            self.add_const(self.string(one()), share=False)
        else:
            raise self.error(f"unknown directive {name} (.stack .locals .local .const)")

    def first_pass(self, text: str) -> None:
        pc = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            self.line = number
            content, closed = _strip_comment(raw)
            if not closed:
                raise self.error("unterminated string literal")
            tokens = _TOKEN.findall(content)
            while tokens and tokens[0].endswith(":") and not tokens[0].startswith('"'):
                label = tokens.pop(0)[:-1]
                if not _NAME.match(label):
                    raise self.error(f"bad label name {label!r}")
                if label in self.labels:
                    raise self.error(f"label {label!r} defined twice")
                self.labels[label] = pc
            if not tokens:
                continue
            head, args = tokens[0], tokens[1:]
            if head.startswith("."):
                self.directive(head.lower(), args)
                continue
            op = isa.BY_NAME.get(head.upper())
            if op is None:
                raise self.error(f"unknown instruction {head!r}")
            want = 2 if op.operand is Operand.CONST2 else (0 if op.operand is Operand.NONE else 1)
            if len(args) != want:
                raise self.error(f"{op.name} takes {want} operand{'s' if want != 1 else ''}")
            self.instrs.append(_Instr(number, op, args, pc))
            pc += op.size
        if pc > isa.CODE_LEN_MAX:
            raise self.error(f"program is {pc} bytes; the limit is {isa.CODE_LEN_MAX}")

    def encode(self) -> bytes:
        code = bytearray()
        for ins in self.instrs:
            self.line = ins.line
            assert len(code) == ins.pc
            code.append(ins.op.code)
            kind = ins.op.operand
            if kind is Operand.IMM64:
                value = self.integer(ins.args[0], isa.I64_MIN, isa.I64_MAX, "PUSH value")
                code += value.to_bytes(8, "little", signed=True)
            elif kind is Operand.CONST:
                code.append(self.constant(ins.args[0]))
            elif kind is Operand.CONST2:
                code.append(self.constant(ins.args[0]))
                code.append(self.constant(ins.args[1]))
            elif kind is Operand.LOCAL:
                index = self.local(ins.args[0])
                self.locals_used = max(self.locals_used, index + 1)
                code.append(index)
            elif kind is Operand.FIELD:
                code.append(self.field(ins.args[0]))
            elif kind is Operand.TARGET:
                code += self.target(ins.args[0]).to_bytes(2, "little")
        return bytes(code)

    def container(self, code: bytes, max_stack: int) -> bytes:
        n_locals = self.n_locals
        if n_locals is None:
            n_locals = max(self.locals_used, len(self.local_names))
        pool = bytearray()
        for s in self.consts:
            raw = s.encode("utf-8")
            pool += len(raw).to_bytes(2, "little") + raw
        header = (
            isa.MAGIC
            + bytes((isa.VERSION, 0))
            + max_stack.to_bytes(2, "little")
            + n_locals.to_bytes(2, "little")
            + len(self.consts).to_bytes(2, "little")
            + len(code).to_bytes(4, "little")
        )
        return header + bytes(pool) + code

    def line_of(self, offset: int, code_start: int) -> int:
        pc = offset - code_start
        line = self.instrs[0].line if self.instrs else 1
        for ins in self.instrs:
            if ins.pc > pc:
                break
            line = ins.line
        return line


def assemble(text: str, *, filename: str = "<asm>", check: bool = True) -> bytes:
    """Assemble `.gasm` text into bytecode. Raises AsmError naming the line.

    With `check` (the default) the result must pass the verifier; only the disassembler's tests
    of deliberately broken programs turn it off."""
    a = _Assembler(filename)
    a.first_pass(text)
    code = a.encode()
    if a.stack is not None:
        data = a.container(code, a.stack)
    else:
        # Assemble with the largest declarable stack, let the verifier find the deepest point.
        data = a.container(code, 65535)
        verdict = ref.verify(data, _ASM_LIMITS)
        if verdict.program is not None:
            data = a.container(code, verdict.program.max_depth)
    if check:
        verdict = ref.verify(data, _ASM_LIMITS)
        if verdict.status is not Status.OK:
            code_start = len(data) - len(code)
            if verdict.offset >= code_start and a.instrs:
                line = a.line_of(verdict.offset, code_start)
            else:
                line = len(text.splitlines()) or 1
            raise a.error(f"{verdict.status.reason} ({verdict.status.name})", line)
    return data


# --- disassembler ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decoded:
    max_stack: int
    n_locals: int
    consts: list[str]
    code_start: int
    # (pc, op, raw operand bytes)
    instrs: list[tuple[int, isa.OpInfo, bytes]]


def decode(data: bytes) -> Decoded:
    """Split bytecode into header, constants and instructions; only structural checks (stack and
    jump checks are the verifier's), so a broken-but-decodable program can still be inspected."""
    if len(data) < isa.HEADER_SIZE:
        raise DisasmError(0, "shorter than the 16-byte header")
    if not is_bytecode(data):
        raise DisasmError(0, "not glyph VM bytecode (no GZVM magic)")
    if data[isa.OFF_VERSION] != isa.VERSION:
        raise DisasmError(isa.OFF_VERSION, f"unsupported version {data[isa.OFF_VERSION]}")
    if data[isa.OFF_FLAGS] != 0:
        raise DisasmError(isa.OFF_FLAGS, "reserved flags byte is not zero")
    max_stack = int.from_bytes(data[6:8], "little")
    n_locals = int.from_bytes(data[8:10], "little")
    n_consts = int.from_bytes(data[10:12], "little")
    code_len = int.from_bytes(data[12:16], "little")
    consts: list[str] = []
    off = isa.HEADER_SIZE
    for _ in range(n_consts):
        if len(data) - off < 2:
            raise DisasmError(off, "constant pool truncated")
        slen = int.from_bytes(data[off : off + 2], "little")
        raw = data[off + 2 : off + 2 + slen]
        if len(raw) != slen:
            raise DisasmError(off, "constant pool truncated")
        try:
            consts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DisasmError(off, "constant is not UTF-8") from None
        off += 2 + slen
    code = data[off:]
    if len(code) != code_len:
        raise DisasmError(off, f"code section is {len(code)} bytes, header says {code_len}")
    instrs: list[tuple[int, isa.OpInfo, bytes]] = []
    pc = 0
    while pc < code_len:
        op = isa.BY_CODE.get(code[pc])
        if op is None:
            raise DisasmError(off + pc, f"unknown opcode 0x{code[pc]:02x}")
        if pc + op.size > code_len:
            raise DisasmError(off + pc, f"{op.name} operand truncated")
        instrs.append((pc, op, code[pc + 1 : pc + op.size]))
        pc += op.size
    return Decoded(max_stack, n_locals, consts, off, instrs)


def _quote(s: str) -> str:
    # JSON-ish escaping that ast.literal_eval reads back exactly.
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


def disassemble(data: bytes) -> str:
    d = decode(data)
    boundaries = {pc for pc, _, _ in d.instrs}
    targets = {
        int.from_bytes(raw, "little")
        for _, op, raw in d.instrs
        if op.operand is Operand.TARGET and int.from_bytes(raw, "little") in boundaries
    }
    first_index: dict[str, int] = {}
    for i, s in enumerate(d.consts):
        first_index.setdefault(s, i)

    def const(k: int) -> str:
        if k < len(d.consts) and first_index[d.consts[k]] == k:
            return _quote(d.consts[k])
        return f"${k}"

    lines = [
        f"; glyph VM bytecode v{isa.VERSION}: {len(d.consts)} constants, "
        f"{len(data) - d.code_start} code bytes (pc = code offset, shown at the right)",
        f".stack {d.max_stack}",
        f".locals {d.n_locals}",
    ]
    lines += [f".const {_quote(s):<40} ; ${i}" for i, s in enumerate(d.consts)]
    for pc, op, raw in d.instrs:
        if pc in targets:
            lines.append(f"L{pc:04x}:")
        kind = op.operand
        if kind is Operand.IMM64:
            args = str(int.from_bytes(raw, "little", signed=True))
        elif kind is Operand.CONST:
            args = const(raw[0])
        elif kind is Operand.CONST2:
            args = f"{const(raw[0])} {const(raw[1])}"
        elif kind is Operand.LOCAL:
            args = str(raw[0])
        elif kind is Operand.FIELD:
            args = isa.FIELDS[raw[0]] if raw[0] < len(isa.FIELDS) else str(raw[0])
        elif kind is Operand.TARGET:
            t = int.from_bytes(raw, "little")
            args = f"L{t:04x}" if t in targets else str(t)
        else:
            args = ""
        text = f"    {op.name} {args}".rstrip()
        lines.append(f"{text:<44} ; {pc:04x}")
    return "\n".join(lines) + "\n"
