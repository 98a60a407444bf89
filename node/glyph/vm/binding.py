"""Python binding of the Zig glyph VM (`vm_zig/`, loaded through ctypes).

    from gibsey.node.glyph.vm import binding as vm
    vm.verify(code)                       # raises vm.VerifyError(status, offset, reason)
    result = vm.run(code, vm.Trigger(symbol=3, rotation=3, actor=7))
    if result.ok: publish(result.effects) # else: result.error, and publish nothing

A `Vm` owns one fixed-size VM (stack, locals, effect buffer and verifier scratch are allocated once,
by the library, when it is created) and reuses it for every run; the module-level `verify`/`run`
share one default instance. Every run verifies the bytecode first: the library has no way to run
unverified code, so a bad program can only ever be refused, never crash the host.

The library is found at $GIBSEY_VM_LIB, else <repo>/vm_zig/zig-out/lib/libgibsey_vm.so.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gibsey.node.glyph.vm import isa
from gibsey.node.glyph.vm.isa import EffectKind, Status, Trigger

__all__ = [
    "DEFAULT_FUEL",
    "MAX_FUEL",
    "Effect",
    "EffectKind",
    "RunResult",
    "Status",
    "Trigger",
    "VerifyError",
    "Vm",
    "VmError",
    "VmLibraryError",
    "library_path",
    "run",
    "verify",
]

ABI_VERSION = 1
DEFAULT_FUEL = 10_000
# The library takes fuel as a u64: a larger int would be cut to its low 64 bits by ctypes (2**64
# runs with no fuel at all), so it is refused instead.
MAX_FUEL = 2**64 - 1

# node/ is reached through the gibsey/node symlink: resolve() finds the real repo root.
_REPO = Path(__file__).resolve().parents[3]
DEFAULT_LIB = _REPO / "vm_zig" / "zig-out" / "lib" / "libgibsey_vm.so"


class VmLibraryError(RuntimeError):
    """The shared library is missing or does not match this binding."""


class VerifyError(ValueError):
    """The bytecode was refused by the verifier before anything ran."""

    def __init__(self, status: Status | int, offset: int, reason: str) -> None:
        super().__init__(f"{_name(status)} at byte {offset}: {reason}")
        self.status = status
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VmError:
    """A run-time failure: the program stopped at `pc` (a code offset) with `status`."""

    status: Status | int
    pc: int
    reason: str

    def __str__(self) -> str:
        return f"{_name(self.status)} at pc {self.pc}: {self.reason}"


def _name(status: Status | int) -> str:
    return status.name if isinstance(status, Status) else f"status {status}"


class Effect(NamedTuple):
    """One effect requested by a program, in program order.

    Raw fields mirror the Zig struct (a, b, c integers; s1, s2 strings); the properties name them
    per kind. Immutable like a frozen dataclass, but built at tuple speed (every rotation makes
    several)."""

    kind: EffectKind
    pc: int
    a: int = 0
    b: int = 0
    c: int = 0
    s1: str | None = None
    s2: str | None = None

    @property
    def topic(self) -> str | None:
        return self.s1 if self.kind in (EffectKind.EMIT, EffectKind.EMITS) else None

    @property
    def payload(self) -> int | str | None:
        if self.kind is EffectKind.EMIT:
            return self.a
        return self.s2 if self.kind is EffectKind.EMITS else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, named per kind (what an event payload carries)."""
        k = self.kind
        if k is EffectKind.EMIT or k is EffectKind.EMITS:
            return {"kind": "emit", "topic": self.s1, "payload": self.payload}
        if k is EffectKind.MINT:
            return {"kind": "mint", "actor": self.a, "amount": self.b}
        if k is EffectKind.GIFT:
            return {"kind": "gift", "from": self.a, "to": self.b, "amount": self.c}
        if k is EffectKind.ASK:
            return {"kind": "ask", "persona": self.a, "prompt": self.s1}
        return {"kind": "propose", "branch": self.s1}

    def describe(self) -> str:
        d = self.to_dict()
        kind = d.pop("kind")
        args = " ".join(f"{key}={value!r}" for key, value in d.items())
        return f"{kind:<8}{args}"


class RunResult(NamedTuple):
    """Outcome of one run. `effects` is empty unless the run succeeded (programs are atomic: a
    failed run must publish nothing); `partial_effects` keeps what was requested before a failure,
    for diagnostics. A NamedTuple: one is made on every rotation."""

    effects: list[Effect]
    fuel_used: int
    error: VmError | None
    pc: int
    stack: list[int]
    locals: list[int]
    partial_effects: list[Effect]

    @property
    def ok(self) -> bool:
        return self.error is None


# --- ctypes mirrors of the extern structs in vm_zig/src/vm.zig and isa.zig ---------------------


class _Config(ctypes.Structure):
    _fields_ = (
        ("stack_cap", ctypes.c_uint32),
        ("locals_cap", ctypes.c_uint32),
        ("effects_cap", ctypes.c_uint32),
        ("code_cap", ctypes.c_uint32),
    )


class _Trigger(ctypes.Structure):
    _fields_ = (
        ("symbol", ctypes.c_uint32),
        ("rotation", ctypes.c_uint32),
        ("actor", ctypes.c_int64),
        ("node", ctypes.c_int64),
        ("arg", ctypes.c_int64),
    )


class _Effect(ctypes.Structure):
    _fields_ = (
        ("kind", ctypes.c_uint32),
        ("pc", ctypes.c_uint32),
        ("a", ctypes.c_int64),
        ("b", ctypes.c_int64),
        ("c", ctypes.c_int64),
        ("s1_off", ctypes.c_uint32),
        ("s1_len", ctypes.c_uint32),
        ("s2_off", ctypes.c_uint32),
        ("s2_len", ctypes.c_uint32),
    )


class _RunResult(ctypes.Structure):
    _fields_ = (
        ("status", ctypes.c_int32),
        ("pc", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
        ("effect_count", ctypes.c_uint32),
        ("fuel_used", ctypes.c_uint64),
        ("stack_depth", ctypes.c_uint32),
        ("n_locals", ctypes.c_uint32),
        ("effects", ctypes.POINTER(_Effect)),
        ("stack", ctypes.POINTER(ctypes.c_int64)),
        ("locals", ctypes.POINTER(ctypes.c_int64)),
    )


def library_path() -> Path:
    env = os.environ.get("GIBSEY_VM_LIB")
    return Path(env) if env else DEFAULT_LIB


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path = library_path()
        if not path.exists():
            raise VmLibraryError(
                f"the glyph VM library is missing: {path}\n"
                "build it with `make` at the repository root (or `vm_zig/build.sh lib`), "
                "or point GIBSEY_VM_LIB at a built libgibsey_vm.so"
            )
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise VmLibraryError(f"cannot load the glyph VM library {path}: {exc}") from exc
        _declare(lib)
        _check(lib, path)
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    # Code is passed as c_char_p: ctypes hands over a pointer to the bytes object's own buffer
    # (no copy; embedded NULs are fine because the length is passed too).
    u8p = ctypes.c_char_p
    lib.gibsey_vm_abi_version.restype = ctypes.c_uint32
    lib.gibsey_vm_abi_version.argtypes = ()
    lib.gibsey_vm_sizeof.restype = ctypes.c_uint32
    lib.gibsey_vm_sizeof.argtypes = (ctypes.c_uint32,)
    lib.gibsey_vm_opcode_info.restype = ctypes.c_uint32
    lib.gibsey_vm_opcode_info.argtypes = (ctypes.c_uint8,)
    lib.gibsey_vm_create.restype = ctypes.c_void_p
    lib.gibsey_vm_create.argtypes = (ctypes.POINTER(_Config),)
    lib.gibsey_vm_destroy.restype = None
    lib.gibsey_vm_destroy.argtypes = (ctypes.c_void_p,)
    lib.gibsey_vm_verify.restype = ctypes.c_int32
    lib.gibsey_vm_verify.argtypes = (
        ctypes.c_void_p,
        u8p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_uint32),
    )
    lib.gibsey_vm_run.restype = ctypes.c_int32
    lib.gibsey_vm_run.argtypes = (
        ctypes.c_void_p,
        u8p,
        ctypes.c_size_t,
        ctypes.POINTER(_Trigger),
        ctypes.c_uint64,
        ctypes.POINTER(_RunResult),
    )


def _check(lib: ctypes.CDLL, path: Path) -> None:
    """Refuse a library built from different sources than this binding's tables."""
    abi = lib.gibsey_vm_abi_version()
    if abi != ABI_VERSION:
        raise VmLibraryError(f"{path} has ABI {abi}, this binding needs {ABI_VERSION}; run `make`")
    for i, layout in enumerate((_Config, _Trigger, _Effect, _RunResult)):
        if lib.gibsey_vm_sizeof(i) != ctypes.sizeof(layout):
            raise VmLibraryError(f"{path}: {layout.__name__} layout differs; run `make`")
    for code in range(256):
        packed = lib.gibsey_vm_opcode_info(code)
        info = isa.BY_CODE.get(code)
        want = 0
        if info is not None:
            want = 1 | info.operand << 8 | info.pops << 16 | info.pushes << 24
        if packed != want:
            raise VmLibraryError(f"{path}: opcode 0x{code:02x} differs from vm_isa.py; run `make`")


class Vm:
    """One VM instance with sizes fixed at creation. Not re-entrant: calls are serialised by a
    lock, and results are copied out of the VM's buffers before the lock is released."""

    def __init__(
        self,
        *,
        stack_cap: int = 256,
        locals_cap: int = 64,
        effects_cap: int = 64,
        code_cap: int = 4096,
    ) -> None:
        self._lib = _load()
        self.config = _Config(stack_cap, locals_cap, effects_cap, code_cap)
        handle = self._lib.gibsey_vm_create(ctypes.byref(self.config))
        if not handle:
            raise ValueError(
                "VM sizes out of range: stack_cap 1..65535, locals_cap 0..256, "
                "effects_cap 1..65536, code_cap 1..65535"
            )
        self._handle: int = handle
        self._lock = threading.Lock()
        # Reused for every run: the hot path allocates no ctypes structs.
        self._trigger = _Trigger()
        self._result = _RunResult()
        # byref() objects made once: they stay valid as long as the structs they point to.
        self._trigger_ref = ctypes.byref(self._trigger)
        self._result_ref = ctypes.byref(self._result)
        self._offset = ctypes.c_uint32()

    def close(self) -> None:
        with self._lock:
            if self._handle:
                self._lib.gibsey_vm_destroy(self._handle)
                self._handle = 0

    def __del__(self) -> None:
        handle = getattr(self, "_handle", 0)
        if handle:
            self._lib.gibsey_vm_destroy(handle)
            self._handle = 0

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> int:
        if not self._handle:
            raise ValueError("this Vm was closed")
        return self._handle

    def check(self, code: bytes) -> tuple[Status | int, int]:
        """(status, byte offset) from the verifier; (Status.OK, 0) when valid."""
        with self._lock:
            status = self._lib.gibsey_vm_verify(
                self._live(), code, len(code), ctypes.byref(self._offset)
            )
            return isa.status_of(status), self._offset.value

    def verify(self, code: bytes) -> None:
        status, offset = self.check(code)
        if status != Status.OK:
            raise VerifyError(status, offset, _reason(status))

    def run(self, code: bytes, trigger: Trigger, fuel: int = DEFAULT_FUEL) -> RunResult:
        """Verify then run `code`. Raises VerifyError for bad bytecode; run-time failures are
        returned in `RunResult.error`. This is the hot path of every rotation: ~1 us in Zig, so
        the Python around it is kept to plain locals and one struct unpack."""
        if not 0 <= fuel <= MAX_FUEL:
            raise ValueError(
                "fuel must not be negative" if fuel < 0 else f"fuel {fuel} is over {MAX_FUEL}"
            )
        symbol, rotation, actor, node, arg = trigger
        if not (
            _I64_MIN <= actor <= _I64_MAX
            and _I64_MIN <= node <= _I64_MAX
            and _I64_MIN <= arg <= _I64_MAX
        ):
            bad = next(
                n
                for n, v in zip(("actor", "node", "arg"), trigger[2:], strict=True)
                if not _I64_MIN <= v <= _I64_MAX
            )
            raise ValueError(f"trigger {bad} does not fit in 64 bits")
        t = self._trigger
        # ctypes would silently truncate out-of-range ints; refuse them instead. Negative
        # symbols/rotations map to a value the VM rejects with BAD_TRIGGER.
        t.symbol = symbol if 0 <= symbol <= _U32_MAX else _U32_MAX
        t.rotation = rotation if 0 <= rotation <= _U32_MAX else _U32_MAX
        t.actor = actor
        t.node = node
        t.arg = arg
        r = self._result
        with self._lock:
            self._lib.gibsey_vm_run(
                self._live(), code, len(code), self._trigger_ref, fuel, self._result_ref
            )
            raw_status = r.status
            known = _STATUS.get(raw_status)  # (not `or`: Status.OK is 0, and falsy)
            status = isa.status_of(raw_status) if known is None else known
            if status in _VERIFY_ERRORS:
                raise VerifyError(status, r.offset, _reason(status))
            count = r.effect_count
            effects: list[Effect] = []
            if count:
                # The effect records are read in one copy and unpacked by struct: indexing the
                # ctypes array builds a Python object per field, ~6x slower.
                raw = ctypes.string_at(r.effects, count * _EFFECT_SIZE)
                for kind_code, pc, a, b, c, s1o, s1n, s2o, s2n in _EFFECT_FORMAT.iter_unpack(raw):
                    kind = _KINDS.get(kind_code)
                    if kind is None:
                        kind = EffectKind(kind_code)  # ValueError: a library newer than this
                    s1 = code[s1o : s1o + s1n].decode() if kind in _S1 else None
                    s2 = code[s2o : s2o + s2n].decode() if kind is EffectKind.EMITS else None
                    effects.append(_new_tuple(Effect, (kind, pc, a, b, c, s1, s2)))
            depth, n_locals = r.stack_depth, r.n_locals
            stack = r.stack[:depth] if depth else []
            local = r.locals[:n_locals] if n_locals else []
            fuel_used, pc = r.fuel_used, r.pc
        if status is _OK:
            return RunResult(effects, fuel_used, None, pc, stack, local, effects)
        error = VmError(status, pc, _reason(status))
        return RunResult([], fuel_used, error, pc, stack, local, effects)


def _reason(status: Status | int) -> str:
    return status.reason if isinstance(status, Status) else "unknown status (library newer?)"


_STATUS: dict[int, Status] = {s.value: s for s in Status}
_KINDS: dict[int, EffectKind] = {k.value: k for k in EffectKind}
_I64_MIN, _I64_MAX = isa.I64_MIN, isa.I64_MAX
_U32_MAX = 2**32 - 1
# Effect(...) runs NamedTuple's Python-level __new__ (0.5 us); the fields here are complete and
# in order, so the tuple is made directly (0.15 us), several times per rotation.
_new_tuple = tuple.__new__
_OK = Status.OK
_VERIFY_ERRORS = frozenset(s for s in Status if s.is_verify_error)
# kind u32, pc u32, a b c i64, s1_off s1_len s2_off s2_len u32: the extern struct Effect.
_EFFECT_FORMAT = struct.Struct("<IIqqqIIII")
_EFFECT_SIZE = ctypes.sizeof(_Effect)
assert _EFFECT_FORMAT.size == _EFFECT_SIZE, "Effect layout changed: update _EFFECT_FORMAT"


_S1 = frozenset({EffectKind.EMIT, EffectKind.EMITS, EffectKind.ASK, EffectKind.PROPOSE})

_default: Vm | None = None
_default_lock = threading.Lock()


def default_vm() -> Vm:
    """The shared instance behind the module-level functions (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Vm()
        return _default


def verify(code: bytes) -> None:
    default_vm().verify(code)


def run(code: bytes, trigger: Trigger, fuel: int = DEFAULT_FUEL) -> RunResult:
    return default_vm().run(code, trigger, fuel)
