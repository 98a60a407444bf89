# The whole dial application on simulated pins: turns, presses, heartbeats -> frames.
from gdial import frame
from gdial.app import DialApp
from gdial.config import ConfigError, merge
from gdial.quad import cw_states
from machine import Clock, Pin


def make(**over):
    cfg = merge(over)
    a = Pin(14, Pin.IN, Pin.PULL_UP)
    b = Pin(15, Pin.IN, Pin.PULL_UP)
    btn = Pin(13, Pin.IN, Pin.PULL_UP)
    clock = Clock(1000)
    sent = []
    app = DialApp(cfg, a, b, btn, clock, sent.append)
    edges = Pin.IRQ_RISING | Pin.IRQ_FALLING
    a.irq(app.on_edge, edges)
    b.irq(app.on_edge, edges)
    app.start()
    return app, a, b, btn, clock, [frame.decode(x) for x in sent], sent


def turn(a, b, detents):
    for s in cw_states(detents):
        a.drive(s >> 1)
        b.drive(s & 1)


def test_boot_hello_then_rotations():
    app, a, b, btn, clock, _, sent = make(symbol=3, symbols=[3])
    turn(a, b, 1)
    app.poll()
    turn(a, b, 2)
    app.poll()
    turn(a, b, -1)
    app.poll()
    frames = [frame.decode(x) for x in sent]
    assert [f.kind for f in frames] == ["H", "R", "R", "R"]
    assert frames[0].boot and frames[0].seq == 0 and frames[0].dial_id == "dial1"
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert [(f.symbol, f.rotation, f.position) for f in frames[1:]] == [
        (3, 1, 1),
        (3, 3, 3),
        (3, 2, 2),
    ]


def press(app, btn, clock, polls):
    """Hold the button down for `polls` polls 10 ms apart, then let it go for 5."""
    for level, n in ((0, polls), (1, 5)):
        btn.drive(level)
        for _ in range(n):
            clock.advance(10)
            app.poll()


def test_short_and_long_press():
    app, a, b, btn, clock, _, sent = make(symbol=0, symbols=[0, 7])
    press(app, btn, clock, 5)
    press(app, btn, clock, 100)
    frames = [frame.decode(x) for x in sent]
    kinds = [(f.kind, f.long) for f in frames if f.kind == "P"]
    assert kinds == [("P", False), ("P", True)], kinds
    last = frames[-1]
    assert (last.kind, last.symbol, last.rotation) == ("R", 7, 0)


def test_heartbeat():
    app, a, b, btn, clock, _, sent = make(heartbeat_s=2)
    for _ in range(50):
        clock.advance(100)
        app.poll()
    hellos = [frame.decode(x) for x in sent if frame.decode(x).kind == "H"]
    assert len(hellos) == 3 and not hellos[1].boot


def test_config_errors():
    for bad in ({"nope": 1}, {"steps_per_detent": 3}, {"symbols": [64]}, {"dial_id": "A B"}):
        try:
            merge(bad)
        except ConfigError:
            continue
        raise AssertionError(bad)
    assert merge({"mqtt": {"host": "10.0.0.2"}})["mqtt"]["port"] == 1883
