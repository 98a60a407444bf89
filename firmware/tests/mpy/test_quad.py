# The quadrature decoder: generated sequences, bounce, missed states, reversals.
from gdial.quad import QuadDecoder, cw_states
from mpytest import Rng


def feed(dec, states):
    total = 0
    for s in states:
        total += dec.update(s)
    return total


def test_clean_turns_every_resolution():
    for spd in (1, 2, 4):
        for n in (1, 2, 7, -1, -5, 40, -40):
            dec = QuadDecoder(spd)
            assert feed(dec, cw_states(n, spd)) == n, (spd, n)
            assert dec.take() == n and dec.take() == 0
            assert dec.jumps == 0


def test_reverse_option_flips_direction():
    dec = QuadDecoder(4, reverse=True)
    assert feed(dec, cw_states(3)) == -3


def test_bounce_at_rest_counts_nothing():
    dec = QuadDecoder(4)
    assert feed(dec, [1, 3] * 50 + [2, 3] * 50) == 0


def test_half_turn_and_back_counts_nothing():
    dec = QuadDecoder(4)
    assert feed(dec, [1, 0, 1, 3]) == 0
    assert feed(dec, cw_states(1)) == 1


def with_bounce(states, rng, start, max_bounces=4):
    """Each transition chatters: the changing line flips back and forth before it settles."""
    out = []
    prev = start
    for s in states:
        for _ in range(rng.below(max_bounces + 1)):
            out.append(s)
            out.append(prev)
        out.append(s)
        prev = s
    return out


def test_generated_turns_with_bounce_are_exact():
    rng = Rng(2024)
    for trial in range(200):
        spd = (1, 2, 4)[trial % 3]
        dec = QuadDecoder(spd)
        expected = 0
        for _ in range(rng.below(6) + 1):
            n = rng.below(9) - 4
            states = cw_states(n, spd, dec.state if spd == 4 else 3)
            if spd != 4 and dec.state != 3:
                continue
            got = feed(dec, with_bounce(states, rng, dec.state))
            assert got == n, (trial, spd, n, got)
            expected += n
        assert dec.position == expected


def test_fast_turn_with_missed_states():
    # A fast spin read too slowly: every other state is missed (both lines changed between
    # reads). The first step gives the direction; jumps continue it.
    dec = QuadDecoder(4)
    states = cw_states(10)
    fast = [states[0]] + [states[i] for i in range(1, len(states), 2)]
    assert fast[-1] == 3
    assert feed(dec, fast) == 10
    assert dec.jumps == len(fast) - 2
    dec = QuadDecoder(4)
    back = cw_states(-6)
    fast = [back[0]] + [back[i] for i in range(1, len(back), 2)]
    assert feed(dec, fast) == -6


def test_jump_with_unknown_direction_is_ignored_then_realigns():
    dec = QuadDecoder(4)
    assert feed(dec, [0, 3]) == 0  # both jumps, no direction known
    assert dec.jumps == 2
    assert feed(dec, cw_states(2)) == 2


def test_reversal_mid_detent():
    dec = QuadDecoder(4)
    # two steps CW, then back to rest CCW: nothing; then a full CCW detent
    assert feed(dec, [1, 0, 1, 3]) == 0
    assert feed(dec, cw_states(-1)) == -1


def test_update_does_not_allocate():
    import gc
    import micropython  # noqa: F401

    dec = QuadDecoder(4)
    states = cw_states(50)
    gc.collect()
    before = gc.mem_alloc()
    for s in states:
        dec.update(s)
    assert gc.mem_alloc() == before, gc.mem_alloc() - before
