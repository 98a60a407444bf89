"""The ledger benchmark runs end to end (tiny sizes; the real figures come from `gibsey bench`)."""

from __future__ import annotations

from gibsey.bench.ledger import run_ledger_bench


def test_bench_returns_rows_with_baselines() -> None:
    rows = run_ledger_bench(n=400, rebuild_n=2000, batch=100)
    names = [r[0] for r in rows]
    assert any(n.startswith("append, batched") for n in names)
    assert any(n.startswith("import, batched") for n in names)
    for _name, figure, baseline, unit in rows:
        assert figure > 0 and unit in ("/s", "s", "/CPU-s")
        assert baseline is None or baseline > 0
