"""`gibsey bench`: run the benchmarks and print each figure next to its same-run baseline."""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from gibsey.bench.report import Row, print_rows
from gibsey.core.console import make_console

# name -> (module, what it measures). A module provides run() -> list[Row].
SUITES: dict[str, tuple[str, str]] = {
    "spine": (
        "gibsey.bench.spine",
        "event spine round trip and throughput vs bare paho + Mosquitto",
    ),
    "restart": (
        "gibsey.bench.restart",
        "turns acknowledged vs performed across a broker kill -9 and restart (20 turns/s)",
    ),
    "flood": (
        "gibsey.bench.flood",
        "20,000 turns in 10 s from many names: acknowledged vs performed + dropped, status p99",
    ),
    "vm": ("gibsey.bench.vm", "Zig VM instructions/s vs the Python reference; rotation cost"),
    "ledger": ("gibsey.bench.ledger", "ledger append/import rates vs bare PyNaCl sign/verify"),
    "rebirth": (
        "gibsey.bench.rebirth",
        "start -> READY, and kill -9 -> READY under systemd (nspawn) vs trivial baselines",
    ),
    "gateway": (
        "gibsey.bench.gateway",
        "HTTP gateway status/rotate req/s and p99 vs a bare FastAPI hello-world",
    ),
    "story": (
        "gibsey.bench.story",
        "diff/merge of two branches of a 1,000-page story, graph rebuild vs git merge-file",
    ),
    "mesh": ("gibsey.bench.mesh", "10/20 mesh nodes: time to converge, bytes vs the lower bound"),
    "dial": (
        "gibsey.bench.dial",
        "dial serial frame -> ritual/performed latency vs a bare serial->MQTT relay",
    ),
    "load": (
        "gibsey.bench.load",
        "dial frame -> ritual p99 while the node's own persona generates vs idle, same run",
    ),
    "agent": (
        "gibsey.bench.agent",
        "persona tokens/s + first token via MQTT vs bare llama.cpp; embeddings; vector search",
    ),
    "vectors": (
        "gibsey.bench.vectors",
        "a persona's memory: embedding; nearest 5 of 100,000 in sqlite-vec vs NumPy brute force",
    ),
    "tensor": (
        "gibsey.bench.tensor",
        "the Agency Tensor's snapshot (full table) vs reading its cells back from SQLite",
    ),
    "footprint": (
        "gibsey.bench.footprint",
        "daemon RSS with the model not loaded (gateway on/off) vs a bare Python process",
    ),
    "rehearse": (
        "gibsey.bench.rehearse",
        "1/3/5/10-node gallery on this machine: dial frame -> ritual p99, RSS per node",
    ),
    "wear": (
        "gibsey.bench.wear",
        "bytes the node writes to disk per dial turn (500 turns at 5/s, /proc/PID/io) vs the entry",
    ),
    "catchup": (
        "gibsey.bench.catchup",
        "a fresh node catching up a 1,000,000-entry history over the mesh vs 2-core bare verify",
    ),
    "image": (
        "gibsey.bench.image",
        "SD image: build time, size, emulated boot-to-READY, node RSS (recorded by make image)",
    ),
}


def _suite(name: str) -> Callable[[], list[Row]]:
    module = importlib.import_module(SUITES[name][0])
    run: Callable[[], list[Row]] = module.run
    return run


def _run(args: argparse.Namespace) -> int:
    # Piped into a file, a row stays one line (core/console.py), as the README's tables need.
    console = make_console()
    names = list(SUITES) if args.suite == "all" else [args.suite]
    failed = False
    for name in names:
        try:
            run = _suite(name)
        except (ModuleNotFoundError, AttributeError) as exc:
            console.print(f"[yellow]bench {name}: not available on this checkout ({exc})[/yellow]")
            continue
        # --entries sizes the suites that take it (catchup); the others ignore it.
        sized = args.entries is not None and "entries" in inspect.signature(run).parameters
        with console.status(f"measuring {name} ..."):
            rows = run(entries=args.entries) if sized else run()  # type: ignore[call-arg]
        print_rows(f"gibsey bench {name}", rows, console)
        failed |= any(r.met is False for r in rows)
    return 1 if failed and args.strict else 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    lines = "\n".join(f"  {n:8} {what}" for n, (_, what) in SUITES.items())
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="measure the node against same-run baselines (ratios, medians)",
        description="Run a benchmark suite and print each figure with its baseline.\n\n"
        f"suites:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", nargs="?", default="all", choices=[*SUITES, "all"])
    p.add_argument("--strict", action="store_true", help="exit 1 if a goal is not met")
    p.add_argument(
        "--entries", type=int, metavar="N", help="history size for catchup (default 1,000,000)"
    )
    p.set_defaults(func=_run)
