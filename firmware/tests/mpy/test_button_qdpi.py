# The button (debounce, short/long) and the detent -> QDPI mapping.
from gdial.button import LONG, NONE, SHORT, Button, ticks_diff
from gdial.qdpi import QdpiDial, symbol_name


def run(btn, levels):
    out = []
    for t, level in levels:
        ev = btn.update(level, t)
        if ev != NONE:
            out.append((t, ev))
    return out


def test_short_press_with_bounce():
    b = Button(20, 800)
    seq = [(0, True), (2, False), (4, True), (6, False), (8, True)]
    seq += [(t, True) for t in range(10, 200, 5)]
    seq += [(200, False), (203, True), (206, False)]
    seq += [(t, False) for t in range(210, 300, 5)]
    assert run(b, seq) == [(230, SHORT)]


def test_long_press_fires_while_held_and_not_on_release():
    b = Button(20, 800)
    seq = [(t, True) for t in range(0, 2000, 10)] + [(t, False) for t in range(2000, 2100, 10)]
    events = run(b, seq)
    assert events == [(800, LONG)], events


def test_glitch_shorter_than_debounce_is_ignored():
    b = Button(20, 800)
    assert run(b, [(0, True), (5, False), (10, False), (50, False)]) == []


def test_ticks_wrap():
    assert ticks_diff(5, (1 << 30) - 5) == 10
    b = Button(20, 800)
    start = (1 << 30) - 100
    seq = [((start + t) % (1 << 30), True) for t in range(0, 1000, 10)]
    assert [e for _, e in run(b, seq)] == [LONG]


def test_turning_steps_through_the_four_rotations():
    d = QdpiDial(symbol=5, symbols=[5])
    seen = []
    for _ in range(5):
        d.turn(1)
        seen.append(d.rotation)
    assert seen == [1, 2, 3, 0, 1]
    d.turn(-2)
    assert d.rotation == 3 and d.symbol == 5 and d.state == 23 and d.position == 3


def test_carry_and_cycle():
    d = QdpiDial(symbol=0, symbols=[0, 1, 2], carry=True)
    d.turn(4)
    assert (d.symbol, d.rotation) == (1, 0)
    d.turn(-1)
    assert (d.symbol, d.rotation) == (0, 3)
    d = QdpiDial(symbol=2, symbols=[0, 1, 2])
    d.turn(1)
    d.cycle()
    assert (d.symbol, d.rotation) == (0, 0)
    d.cycle(-1)
    assert d.symbol == 2
    assert symbol_name(2) == "glyph-marrow" and symbol_name(40) == "hidden-40"
