"""Shared helpers for the VM tests: build the library when missing, and compare outcomes of the
Zig VM (through the binding) with the Python reference model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gibsey.node.glyph.vm import binding as vm
from gibsey.node.glyph.vm import reference as ref
from gibsey.node.glyph.vm.isa import Status

REPO = Path(__file__).resolve().parent.parent
BUILD_SH = REPO / "vm_zig" / "build.sh"
# build.sh runs `$PYTHON -m ziglang`: the interpreter running the tests has the pinned toolchain.
BUILD_ENV = dict(os.environ, PYTHON=sys.executable)


def ensure_library() -> None:
    """`make` builds the library; a bare `pytest` on a fresh checkout builds it here instead of
    failing every test with 'library missing'."""
    if os.environ.get("GIBSEY_VM_LIB") or vm.DEFAULT_LIB.exists():
        return
    subprocess.run([str(BUILD_SH), "lib"], check=True, timeout=600, env=BUILD_ENV)


ensure_library()


def header(
    *,
    max_stack: int = 8,
    n_locals: int = 4,
    consts: tuple[bytes, ...] = (),
    code: bytes = b"\x01",
    code_len: int | None = None,
    magic: bytes = b"GZVM",
    version: int = 1,
    flags: int = 0,
    n_consts: int | None = None,
) -> bytes:
    """Raw bytecode with every header field controllable, for verifier tests."""
    pool = b"".join(len(c).to_bytes(2, "little") + c for c in consts)
    return (
        magic
        + bytes((version, flags))
        + max_stack.to_bytes(2, "little")
        + n_locals.to_bytes(2, "little")
        + (len(consts) if n_consts is None else n_consts).to_bytes(2, "little")
        + (len(code) if code_len is None else code_len).to_bytes(4, "little")
        + pool
        + code
    )


def ref_effects(data: bytes, outcome: ref.Outcome) -> list[tuple[Any, ...]]:
    def s(off: int, length: int) -> str:
        return data[off : off + length].decode("utf-8")

    out: list[tuple[Any, ...]] = []
    for kind, pc, a, b, c, o1, l1, o2, l2 in outcome.effects:
        k = vm.EffectKind(kind)
        s1 = s(o1, l1) if k in (1, 2, 5, 6) else None
        s2 = s(o2, l2) if k == 2 else None
        out.append((k, pc, a, b, c, s1, s2))
    return out


def zig_effects(effects: list[vm.Effect]) -> list[tuple[Any, ...]]:
    return [(e.kind, e.pc, e.a, e.b, e.c, e.s1, e.s2) for e in effects]


def zig_outcome(machine: vm.Vm, data: bytes, trigger: vm.Trigger, fuel: int) -> tuple[Any, ...]:
    """Everything observable about one run on the Zig VM, in a comparable shape."""
    status, offset = machine.check(data)
    if status != Status.OK:
        return (status, offset)
    t = vm.Trigger(trigger.symbol, trigger.rotation, trigger.actor, trigger.node, trigger.arg)
    r = machine.run(data, t, fuel)
    assert r.fuel_used <= fuel
    st = Status.OK if r.error is None else r.error.status
    return (st, r.pc, r.fuel_used, zig_effects(r.partial_effects), r.stack, r.locals)


def ref_outcome(data: bytes, trigger: vm.Trigger, fuel: int, limits: ref.Limits) -> tuple[Any, ...]:
    o = ref.run(data, trigger, fuel, limits)
    if o.status.is_verify_error:
        return (o.status, o.offset)
    if o.status is Status.BAD_TRIGGER:
        # Nothing ran; the Zig side reports the same through RunResult.
        return (o.status, 0, 0, [], [], o.locals)
    return (o.status, o.pc, o.fuel_used, ref_effects(data, o), o.stack, o.locals)
