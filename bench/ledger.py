"""`gibsey bench ledger`: append and import rates next to bare PyNaCl, and view rebuild time.

Goals (issue 4): appends >= 50% of the bare sign rate, imports >= 70% of the bare verify rate,
both measured in the same run on the same machine. Appends and imports are measured two ways:
batched (one transaction and one fsync per batch - the figure held against the goal) and
single (one fsync per entry, what a lone `gibsey ledger gift` costs; bounded by the disk).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nacl.signing import SigningKey

from gibsey.bench.report import Row as ReportRow
from gibsey.ledger.entry import DOMAIN
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import Store
from gibsey.ledger.testing import FeedWriter

Row = tuple[str, float, float | None, str]  # name, figure, baseline, unit

BODY = {"from": "london-fox", "to": "glyph-marrow", "amount": 3, "memo": "for the dial"}
MINT = {"actor": "london-fox", "amount": 5, "ritual": "read"}


def _rate(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _bare_rates(n: int) -> tuple[float, float]:
    key = SigningKey(b"\x42" * 32)
    msg = DOMAIN + b"x" * 300  # about one gift entry's payload
    sigs = [key.sign(msg).signature for _ in range(8)]
    vk = key.verify_key

    def sign() -> None:
        for _ in range(n):
            key.sign(msg)

    def verify() -> None:
        for i in range(n):
            vk.verify(msg, sigs[i & 7])

    return _rate(n, sign), _rate(n, verify)


def _append_rates(tmp: Path, n: int, batch: int) -> tuple[float, float]:
    key = SigningKey(b"\x43" * 32)
    store = Store.open(tmp / "append")
    store.append(key, "mint", MINT)

    def batched() -> None:
        for _ in range(n // batch):
            store.append_many(key, [("gift", BODY)] * batch)

    def single() -> None:
        for _ in range(n // 10):
            store.append(key, "gift", BODY)

    rates = _rate(n // batch * batch, batched), _rate(n // 10, single)
    store.close()
    return rates


def _import_rates(tmp: Path, n: int, batch: int, threads: int) -> tuple[float, float]:
    peer = FeedWriter(44)
    raws = [peer.next("gift", BODY).raw for _ in range(n + n // 10)]
    store = Store.open(tmp / f"import{threads}", verify_threads=threads)

    def batched() -> None:
        for i in range(0, n, batch):
            store.import_many(raws[i : i + batch])

    def single() -> None:
        for raw in raws[n:]:
            store.import_entry(raw)

    rates = _rate(n, batched), _rate(n // 10, single)
    assert store.count() == len(raws)
    store.close()
    return rates


def _rebuild_seconds(tmp: Path, n: int) -> float:
    """Fold n entries from 4 feeds; building them takes the fast path (synchronous=OFF)."""
    store = Store.open(tmp / "rebuild", synchronous="OFF")
    writers = [FeedWriter(50 + i) for i in range(4)]
    batch: list[bytes] = []
    for i in range(n):
        w = writers[i % 4]
        w.observe(writers[(i - 1) % 4].lamport)
        # A second of wall clock per entry: the mints stay within each feed's mint budget.
        wall = i * 1000
        if i % 10 == 0:
            body = {"actor": f"visitor:{i % 97}", "amount": 50, "ritual": "read"}
            e = w.next("mint", body, wall=wall)
        else:
            giver, receiver = i % 97, (i % 97 + 1 + i % 7) % 97
            e = w.next(
                "gift",
                {"from": f"visitor:{giver}", "to": f"visitor:{receiver}", "amount": 7},
                wall=wall,
            )
        batch.append(e.raw)
        if len(batch) == 5000:
            store.import_many(batch)
            batch.clear()
    store.import_many(batch)
    ledger = Ledger(store, SigningKey(b"\x45" * 32))
    t0 = time.perf_counter()
    view = ledger.rebuild()
    seconds = time.perf_counter() - t0
    assert view.folded == n
    store.close()
    return seconds


def run_ledger_bench(n: int = 20_000, rebuild_n: int = 100_000, batch: int = 1000) -> list[Row]:
    """Run the ledger benchmark; each row is (name, figure, baseline or None, unit)."""
    sign, verify = _bare_rates(n)
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-ledger-") as d:
        tmp = Path(d)
        append_batched, append_single = _append_rates(tmp, n, batch)
        threads = min(4, os.cpu_count() or 1)
        import_batched, import_single = _import_rates(tmp, n, batch, threads)
        import_one_thread, _ = _import_rates(tmp, n, batch, 1)
        rebuild = _rebuild_seconds(tmp, rebuild_n)
    return [
        ("bare PyNaCl sign", sign, None, "/s"),
        ("bare PyNaCl verify", verify, None, "/s"),
        (f"append, batched x{batch} (goal >= 50% of sign)", append_batched, sign, "/s"),
        ("append, single durable (fsync each)", append_single, sign, "/s"),
        (
            f"import, batched x{batch}, verify on {threads} threads (goal >= 70% of verify)",
            import_batched,
            verify,
            "/s",
        ),
        (f"import, batched x{batch}, 1 thread", import_one_thread, verify, "/s"),
        ("import, single durable (fsync each)", import_single, verify, "/s"),
        (f"rebuild all views from {rebuild_n:,} entries", rebuild, None, "s"),
    ]


def run() -> list[ReportRow]:
    """Rows for `gibsey bench ledger`, with the issue's goals attached."""
    goals = {"append, batched": (">=", 0.5), "import, batched x": (">=", 0.7)}
    out = []
    for name, figure, base, unit in run_ledger_bench():
        goal = next(
            (
                g
                for prefix, g in goals.items()
                if name.startswith(prefix) and "1 thread" not in name
            ),
            None,
        )
        out.append(ReportRow(name, figure, base, unit, goal=goal))
    return out


if __name__ == "__main__":
    for name, figure, base, unit in run_ledger_bench():
        pct = f"  ({100 * figure / base:.0f}% of baseline)" if base else ""
        print(f"{name:68s} {figure:12,.1f} {unit}{pct}")
