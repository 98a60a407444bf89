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


def test_the_p99_limit_is_the_machines_own_tail_at_a_rotations_length() -> None:
    """The p99's limit, from this run's own figures: runs of bare calls as long as a rotation
    (7 here) had a p99 2x their median, so a rotation at 7x has a p99 of at least 14x."""
    samples = _samples(host=28.0, floor=14.0)
    samples.cpu = [28.0] * 100
    samples.gc_off = [28.0] * 100
    samples.vm_in_turn = [4.0] * 100
    samples.calls_per_run = 7
    samples.machine_run = [28.0] * 98 + [56.0] * 2  # p99 56: 2x the median
    note = rotation._limits(samples)
    assert "runs of 7 bare calls (as long as a rotation) have a p99 2.0x their median" in note
    assert "(7.0x) has a p99 of at least 14.0x from the machine alone" in note
