"""`gibsey bench load`'s rows: a missed ratio goal says what the same load did to the bare relay
in the same run (issue 19: a row that misses its goal names the limit, with its measurement)."""

from __future__ import annotations

from gibsey.bench import load


def _times(
    node_idle: float, node_load: float, bare_idle: float, bare_load: float
) -> dict[tuple[str, str], list[float]]:
    def ms(v: float) -> list[float]:
        return [v / 1e3] * 200

    return {
        ("idle", load._RITUALS): ms(node_idle),
        ("loaded", load._RITUALS): ms(node_load),
        ("idle", load._RELAYED): ms(bare_idle),
        ("loaded", load._RELAYED): ms(bare_load),
    }


def test_a_missed_ratio_names_the_bare_relays_own_slowdown() -> None:
    rows = load._rows(_times(1.0, 3.0, 0.5, 2.0), "worker nice 10", 50.0)
    loaded = next(r for r in rows if r.name.endswith("persona generating") and "p99" in r.name)
    assert loaded.met is False
    assert "limit: the bare relay, under the same load in the same run, goes 4.00x" in loaded.note
    assert "(0.50 -> 2.00 ms p99) against the node's 3.00x" in loaded.note


def test_a_met_ratio_says_no_limit() -> None:
    rows = load._rows(_times(1.0, 1.2, 0.5, 2.0), "worker nice 10", 50.0)
    loaded = next(r for r in rows if r.name.endswith("persona generating") and "p99" in r.name)
    assert loaded.met is True
    assert "limit" not in loaded.note
