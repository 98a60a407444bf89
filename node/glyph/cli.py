"""`gibsey vm`: assemble, disassemble, verify and run glyph programs.

Registered by gibsey/cli.py through `register(subparsers, common)`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import TypeAlias

from gibsey.core.config import resolve_data_dir
from gibsey.core.identity import load_or_create
from gibsey.core.symbols import CHARACTERS, ROTATIONS, SYMBOLS, state_of
from gibsey.node.glyph.opcode_table import MAX_PROGRAM, STATES, OpcodeTable, check_program
from gibsey.node.glyph.vm import asm as vm_asm
from gibsey.node.glyph.vm import binding as vm
from gibsey.node.glyph.vm import isa

BYTECODE_SUFFIX = ".gbc"

# The 16 character symbols in corpus order (DESIGN.md); ids 16..63 are the hidden symbols.
CHARACTER_SLUGS: tuple[str, ...] = tuple(slug for slug, _colour in CHARACTERS)

_EPILOG = """\
FILE may be assembly text (.gasm) or assembled bytecode (starts with the GZVM magic); the kind is
detected from the content. The instruction set and file format are in vm_zig/ISA.md.

examples:
  gibsey vm asm vm_zig/examples/dream.gasm            # writes vm_zig/examples/dream.gbc
  gibsey vm dis vm_zig/examples/dream.gbc
  gibsey vm run vm_zig/examples/dream.gasm --symbol london-fox --rotation dream --actor 7
"""


class _CliError(Exception):
    pass


def _number_below(text: str, count: int, what: str, expected: str) -> int:
    """`text` as a number 0..count-1 (0x.. too), or the error that says what was `expected`."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
    if not 0 <= value < count:
        raise argparse.ArgumentTypeError(f"{what} {value} out of range 0..{count - 1}")
    return value


def _symbol(text: str) -> int:
    if text in CHARACTER_SLUGS:
        return CHARACTER_SLUGS.index(text)
    slugs = f"{', '.join(CHARACTER_SLUGS[:3])}, ..."
    return _number_below(text, isa.SYMBOL_COUNT, "symbol", f"0..63 or a character slug ({slugs})")


def _rotation(text: str) -> int:
    if text.lower() in ROTATIONS:
        return ROTATIONS.index(text.lower())
    expected = f"0..3 or one of {', '.join(ROTATIONS)}"
    return _number_below(text, isa.ROTATION_COUNT, "rotation", expected)


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _fuel(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("fuel must not be negative")
    if value > vm.MAX_FUEL:
        raise argparse.ArgumentTypeError(
            f"fuel {value} is over the VM's maximum, {vm.MAX_FUEL} (2**64 - 1)"
        )
    return value


def _add_state_arguments(p: argparse.ArgumentParser) -> None:
    """--symbol and --rotation: the QDPI state a program runs for (or is bound to)."""
    p.add_argument(
        "--symbol",
        "-s",
        type=_symbol,
        required=True,
        metavar="S",
        help="base symbol 0..63 or a character slug (london-fox, ...)",
    )
    p.add_argument(
        "--rotation",
        "-r",
        type=_rotation,
        required=True,
        metavar="R",
        help="0..3 or read, write, remember, dream",
    )


# Quoted: argparse's action class is generic only to the type checker.
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(subparsers: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "vm",
        parents=[common],
        help="assemble, disassemble and run glyph programs (the Zig VM)",
        description="Work with glyph programs for the Zig opcode VM.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="vm_command", metavar="ACTION", title="actions")

    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)
    _add_asm(sub, common)
    _add_dis_and_verify(sub, common)
    _add_run(sub, common)
    _add_load_and_table(sub, common)


def _add_asm(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    asm = sub.add_parser(
        "asm",
        parents=[common],
        help="assemble .gasm text into bytecode",
        description="Assemble a .gasm program into verified bytecode.",
    )
    asm.add_argument("file", metavar="FILE", help="assembly text (.gasm)")
    asm.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help=f"where to write the bytecode (default: FILE with {BYTECODE_SUFFIX}; '-' = stdout)",
    )
    asm.set_defaults(func=cmd_asm)


def _add_dis_and_verify(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    dis = sub.add_parser(
        "dis",
        parents=[common],
        help="disassemble bytecode into text that re-assembles to the same bytes",
        description="Print bytecode as .gasm text (pc offsets in the right-hand comments).",
    )
    dis.add_argument("file", metavar="FILE", help="bytecode, or .gasm (assembled first)")
    dis.set_defaults(func=cmd_dis)

    check = sub.add_parser(
        "verify",
        parents=[common],
        help="run the verifier only",
        description="Verify a program with the Zig verifier, and check it is within the "
        f"{MAX_PROGRAM}-byte limit of `gibsey vm load`; exit 0 if it would be accepted.",
    )
    check.add_argument("file", metavar="FILE", help="bytecode or .gasm")
    check.set_defaults(func=cmd_verify)


def _add_run(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a program against a glyph rotation and print its effects",
        description="Verify and run FILE as if the dial had turned to (--symbol, --rotation). "
        "Effects are printed, not performed: nothing is published or written.",
    )
    run.add_argument("file", metavar="FILE", help="bytecode or .gasm")
    _add_state_arguments(run)
    run.add_argument("--actor", type=_int, default=0, metavar="A", help="actor id (default 0)")
    run.add_argument("--node", type=_int, default=0, metavar="N", help="node id (default 0)")
    run.add_argument(
        "--arg", type=_int, default=0, metavar="X", help="trigger argument (default 0)"
    )
    run.add_argument(
        "--fuel",
        type=_fuel,
        default=vm.DEFAULT_FUEL,
        metavar="N",
        help=f"instruction budget, 0..{vm.MAX_FUEL} (default {vm.DEFAULT_FUEL})",
    )
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(func=cmd_run)


def _add_load_and_table(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    load = sub.add_parser(
        "load",
        parents=[common],
        help="bind a program to a glyph state in the node's opcode table",
        description="Verify FILE and bind it to (--symbol, --rotation) in the opcode table of the "
        "node's data directory. A running node uses it from the next rotation on, with no "
        "restart. A program the verifier refuses changes nothing.",
    )
    load.add_argument("file", metavar="FILE", help="bytecode or .gasm")
    _add_state_arguments(load)
    load.set_defaults(func=cmd_load)

    table = sub.add_parser(
        "table",
        parents=[common],
        help="show which program each glyph state runs",
        description="Print the opcode table of the node's data directory: one line per state "
        "(symbol:rotation, version, program hash, where it came from).",
    )
    table.add_argument(
        "--symbol", "-s", type=_symbol, default=None, metavar="S", help="only this base symbol"
    )
    table.add_argument("--history", action="store_true", help="every version, not only the current")
    table.set_defaults(func=cmd_table)


def _load(path_text: str) -> bytes:
    path = Path(path_text)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if vm_asm.is_bytecode(data):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _CliError(f"{path} is neither bytecode (GZVM) nor UTF-8 assembly text") from None
    try:
        return vm_asm.assemble(text, filename=str(path))
    except vm_asm.AsmError as exc:
        raise _CliError(str(exc)) from exc


def cmd_asm(args: argparse.Namespace) -> int:
    try:
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _CliError(f"cannot read {path} as text: {exc}") from exc
        try:
            data = vm_asm.assemble(text, filename=str(path))
        except vm_asm.AsmError as exc:
            raise _CliError(str(exc)) from exc
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return 0
        out = Path(args.output) if args.output else path.with_suffix(BYTECODE_SUFFIX)
        out.write_bytes(data)
        print(f"wrote {out} ({len(data)} bytes)")
        return 0
    except _CliError as exc:
        print(f"gibsey vm asm: {exc}", file=sys.stderr)
        return 2


def cmd_dis(args: argparse.Namespace) -> int:
    try:
        data = _load(args.file)
        sys.stdout.write(vm_asm.disassemble(data))
        return 0
    except (_CliError, vm_asm.DisasmError) as exc:
        print(f"gibsey vm dis: {exc}", file=sys.stderr)
        return 2


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        data = _load(args.file)
        check_program(data)  # as `vm load` checks it
    except (_CliError, ValueError, vm.VerifyError, vm.VmLibraryError) as exc:
        print(f"gibsey vm verify: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({len(data)} bytes)")
    return 0


def _persona(pid: int) -> str:
    return CHARACTER_SLUGS[pid] if 0 <= pid < len(CHARACTER_SLUGS) else f"hidden-{pid}"


def _describe(effect: vm.Effect) -> str:
    text = effect.describe()
    if effect.kind is vm.EffectKind.ASK:
        text += f"  ({_persona(effect.a)})"
    return text


def _instruction_at(data: bytes, pc: int) -> str:
    try:
        decoded = vm_asm.decode(data)
    except vm_asm.DisasmError:
        return ""
    for at, op, _raw in decoded.instrs:
        if at == pc:
            return op.name
    return ""


def _run_interruptibly(data: bytes, trigger: vm.Trigger, fuel: int) -> vm.RunResult:
    """vm.run in a worker thread, waited for here: Python runs its Ctrl-C handler only between
    bytecodes of the main thread, never inside a foreign call, so a program given a huge fuel
    (up to 2**64 - 1 instructions: centuries) could not be stopped but by SIGKILL. The wait
    below is interrupted; the worker, a daemon, ends with the process."""
    outcome: list[vm.RunResult | BaseException] = []

    def work() -> None:
        try:
            outcome.append(vm.run(data, trigger, fuel=fuel))
        except BaseException as exc:  # handed to the main thread, raised there
            outcome.append(exc)

    worker = threading.Thread(target=work, name="vm-run", daemon=True)
    worker.start()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def cmd_run(args: argparse.Namespace) -> int:
    try:
        data = _load(args.file)
        trigger = vm.Trigger(args.symbol, args.rotation, args.actor, args.node, args.arg)
        result = _run_interruptibly(data, trigger, args.fuel)
    except (_CliError, vm.VerifyError, vm.VmLibraryError, ValueError) as exc:
        print(f"gibsey vm run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gibsey vm run: interrupted; the program had not ended", file=sys.stderr)
        return 130
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "error": None
                    if result.error is None
                    else {
                        "status": str(getattr(result.error.status, "name", result.error.status)),
                        "pc": result.error.pc,
                        "reason": result.error.reason,
                    },
                    "fuel_used": result.fuel_used,
                    "effects": [e.to_dict() for e in result.effects],
                    "partial_effects": [e.to_dict() for e in result.partial_effects],
                    "stack": result.stack,
                },
                indent=2,
            )
        )
        return 0 if result.ok else 1
    state = trigger.state
    print(
        f"symbol {args.symbol} ({_persona(args.symbol)}), rotation {args.rotation} "
        f"({ROTATIONS[args.rotation]}), state {state}: "
        f"{result.fuel_used} instructions of {args.fuel} fuel"
    )
    if result.error is not None:
        where = _instruction_at(data, result.error.pc)
        print(f"error: {result.error}{f' ({where})' if where else ''}")
        if result.partial_effects:
            print(f"{len(result.partial_effects)} effect(s) requested before the error, discarded:")
            for i, e in enumerate(result.partial_effects, start=1):
                print(f"  {i}. {_describe(e)}")
        return 1
    if not result.effects:
        print("no effects")
    for i, e in enumerate(result.effects, start=1):
        print(f"  {i}. {_describe(e)}")
    if result.stack:
        print(f"stack at HALT: {result.stack}")
    return 0


def _table(args: argparse.Namespace) -> OpcodeTable:
    return OpcodeTable.open(resolve_data_dir(getattr(args, "data", None)))


def cmd_load(args: argparse.Namespace) -> int:
    try:
        code = _load(args.file)
    except _CliError as exc:
        print(f"gibsey vm load: {exc}", file=sys.stderr)
        return 1
    source = None
    if not vm_asm.is_bytecode(Path(args.file).read_bytes()):
        source = Path(args.file).read_text(encoding="utf-8")
    # A write makes the node where none is, as every writing command does (said by gibsey/cli):
    # a table bound into a directory with no node was one `vm table` then called no node.
    load_or_create(resolve_data_dir(getattr(args, "data", None)))
    table = _table(args)
    try:
        binding = table.bind(
            state_of(args.symbol, args.rotation), code, source=source, origin=f"cli:{args.file}"
        )
    except (vm.VerifyError, ValueError) as exc:
        print(f"gibsey vm load: refused, nothing changed: {exc}", file=sys.stderr)
        return 1
    finally:
        table.close()
    name = SYMBOLS[args.symbol].slug
    print(
        f"bound {binding.key} ({name}, {ROTATIONS[args.rotation]}) "
        f"to program {binding.short} (version {binding.version})"
    )
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    table = _table(args)
    try:
        if args.history:
            rows = [
                b
                for state in range(STATES)
                if args.symbol is None or state // 4 == args.symbol
                for b in table.history(state)
            ]
        else:
            current = table.current()
            rows = [
                current[state]
                for state in sorted(current)
                if args.symbol is None or state // 4 == args.symbol
            ]
    finally:
        table.close()
    for b in rows:
        symbol, rotation = divmod(b.state, 4)
        print(
            f"{b.key:>6}  {SYMBOLS[symbol].slug:<20} {ROTATIONS[rotation]:<9}"
            f" v{b.version:<3} {b.short}  {b.origin}"
        )
    return 0
