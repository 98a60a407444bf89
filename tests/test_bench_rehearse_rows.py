"""`gibsey bench rehearse`'s p99 rows: a gallery that misses the 5 ms limit says what the same
moment did to the bare echo (issue 19: a row that misses its goal names the limit, with its
measurement)."""

from __future__ import annotations

from gibsey.bench import rehearse


def _p99_row(p99: float, bare: float) -> str:
    rows = rehearse._rows("10 nodes", (p99, 60.0, 1.0, bare, 1.9, 0.0, 8.0), None)
    assert rows[0].met is (p99 <= rehearse.LIMIT_MS)
    return rows[0].note


def test_a_missed_limit_with_the_echo_over_it_is_the_machines() -> None:
    note = _p99_row(6.96, 6.55)
    assert "not met: the machine's own limit: the bare echo alone misses it (6.55 ms p99" in note
    assert "on 1.90 of" in note


def test_a_missed_limit_with_the_echo_under_it_is_the_nodes() -> None:
    note = _p99_row(8.0, 2.0)
    assert "not met: the bare echo is 4.0x faster; the nodes' own work" in note


def test_a_met_limit_says_nothing_more() -> None:
    assert "not met" not in _p99_row(4.2, 3.9)
