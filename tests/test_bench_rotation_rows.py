"""`gibsey bench vm`'s rotation median: when it misses its goal, the note says why (the floor's
own median in the same run) and what was tried (issue 19: a row that misses its goal names the
limit, with its measurement)."""

from __future__ import annotations

from gibsey.bench import rotation


def _samples(host: float, floor: float) -> rotation.Samples:
    return rotation.Samples(
        host=[host] * 100, bare=[4.0] * 100, floor=[floor] * 100, events_per_rotation=4
    )


def test_a_missed_median_names_the_floor_and_what_was_tried() -> None:
    note = rotation._median_limit(_samples(host=26.0, floor=14.6))
    assert "not met: the floor alone (parse + VM + 4 encodes" in note
    assert "is 3.6x" in note  # 14.6 / 4.0, this run's own figures
    assert "msgspec" in note


def test_a_met_median_says_nothing() -> None:
    assert rotation._median_limit(_samples(host=11.0, floor=9.0)) == ""
