"""Benchmark of the glyph VM (`gibsey bench vm`).

Rows are (name, figure, baseline, unit); the baseline of every row is the same measurement on the
Python reference model (node/vm_reference.py), except `vm.speedup`, whose baseline is the goal from
issue 3 (the Zig VM runs the loop at least 100x faster than the reference).

- vm.loop: instructions per second on a loop-heavy program (vm_zig/examples/loop.gasm).
- vm.speedup: the ratio of the two vm.loop figures.
- vm.verify_run.median / .p99: microseconds for one verify+run of a small program (the Write
  rotation example: a gift, a mint and an event) from Python through the binding, i.e. the VM's
  share of one rotation (the runtime adds lookup and publishing around it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from gibsey.bench import rotation
from gibsey.bench.report import Row as ReportRow
from gibsey.harness.flood import percentile
from gibsey.node.glyph.vm import binding as vm
from gibsey.node.glyph.vm import reference as ref
from gibsey.node.glyph.vm.asm import assemble

EXAMPLES = Path(__file__).resolve().parent.parent / "vm_zig" / "examples"
SPEEDUP_GOAL = 100.0


class BenchRow(NamedTuple):
    name: str
    figure: float
    baseline: float
    unit: str


def _program(name: str) -> bytes:
    return assemble((EXAMPLES / name).read_text(encoding="utf-8"), filename=name)


def _instructions_per_second(run_once: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Best of `repeats` (the least-disturbed run), as instructions per second."""
    best = float("inf")
    used = 0
    for _ in range(repeats):
        start = time.perf_counter_ns()
        used = run_once()
        best = min(best, time.perf_counter_ns() - start)
    return used / (best / 1e9), used


def run_vm_bench(*, quick: bool = False) -> list[BenchRow]:
    """Measure and return the rows. `quick` shrinks the workload (for tests), not the method."""
    machine = vm.Vm(code_cap=4096)
    loop = _program("loop.gasm")
    zig_iters, ref_iters = (20_000, 300) if quick else (500_000, 5_000)
    fuel = 2**62

    def zig_loop() -> int:
        r = machine.run(loop, vm.Trigger(symbol=1, rotation=0, arg=zig_iters), fuel)
        assert r.ok, r.error
        return r.fuel_used

    def ref_loop() -> int:
        o = ref.run(loop, vm.Trigger(symbol=1, rotation=0, arg=ref_iters), fuel)
        assert o.status is vm.Status.OK, o.status
        return o.fuel_used

    zig_ips, _ = _instructions_per_second(zig_loop, 3 if quick else 5)
    ref_ips, _ = _instructions_per_second(ref_loop, 1 if quick else 3)

    small = _program("gift.gasm")
    trigger = vm.Trigger(symbol=3, rotation=1, actor=7, node=1)
    ref_trigger = vm.Trigger(symbol=3, rotation=1, actor=7, node=1)
    n_zig, n_ref = (300, 30) if quick else (5_000, 500)
    for _ in range(100):  # warm up: first calls pay for ctypes and cache misses
        machine.run(small, trigger)
    zig_us: list[float] = []
    for _ in range(n_zig):
        start = time.perf_counter_ns()
        result = machine.run(small, trigger)
        zig_us.append((time.perf_counter_ns() - start) / 1e3)
        assert result.ok
    ref_us: list[float] = []
    for _ in range(n_ref):
        start = time.perf_counter_ns()
        ref.run(small, ref_trigger, vm.DEFAULT_FUEL)
        ref_us.append((time.perf_counter_ns() - start) / 1e3)
    machine.close()

    return [
        BenchRow("vm.loop", zig_ips, ref_ips, "instructions/s"),
        BenchRow("vm.speedup", zig_ips / ref_ips, SPEEDUP_GOAL, "x"),
        BenchRow(
            "vm.verify_run.median", statistics.median(zig_us), statistics.median(ref_us), "us"
        ),
        BenchRow("vm.verify_run.p99", percentile(zig_us, 0.99), percentile(ref_us, 0.99), "us"),
    ]


def run() -> list[ReportRow]:
    """Rows for `gibsey bench vm`, with the issue's goals attached."""
    rows = run_vm_bench()
    out = []
    for row in rows:
        if row.name == "vm.speedup":
            continue  # shown as the ratio of the vm.loop row
        goal = (">=", SPEEDUP_GOAL) if row.name == "vm.loop" else None
        note = {
            "vm.loop": "baseline: Python reference model",
            "vm.verify_run.median": "baseline: reference model",
            "vm.verify_run.p99": "baseline: reference model",
        }.get(row.name, "")
        out.append(ReportRow(row.name, row.figure, row.baseline, row.unit, goal=goal, note=note))
    return out + rotation.run()


if __name__ == "__main__":
    for row in run_vm_bench():
        print(f"{row.name:<24} {row.figure:>16,.1f}  (baseline {row.baseline:,.1f}) {row.unit}")
