# Recorded-format traces (timestamp, A, B) replayed through simulated pins and their interrupts.
import os

from gdial.app import DialApp
from gdial.config import merge
from machine import Clock, Pin


def load(path):
    meta = {}
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                if ":" in line:
                    k, v = line[1:].split(":", 1)
                    meta[k.strip()] = v.strip()
                continue
            t, a, b = line.split()
            rows.append((int(t), int(a), int(b)))
    return meta, rows


def replay(meta, rows):
    cfg = merge({"steps_per_detent": int(meta.get("steps_per_detent", "4")), "symbols": [0]})
    a = Pin(14, Pin.IN, Pin.PULL_UP)
    b = Pin(15, Pin.IN, Pin.PULL_UP)
    btn = Pin(13, Pin.IN, Pin.PULL_UP)
    frames = []
    clock = Clock()
    app = DialApp(cfg, a, b, btn, clock, frames.append)
    a.irq(app.on_edge, Pin.IRQ_RISING | Pin.IRQ_FALLING)
    b.irq(app.on_edge, Pin.IRQ_RISING | Pin.IRQ_FALLING)
    app.start()
    for t, va, vb in rows:
        a.drive(va)
        b.drive(vb)
        clock.now = t // 1000
        if t % 7 == 0:  # the main loop runs at its own pace, between interrupts
            app.poll()
    app.poll()
    return app, frames


def test_every_trace_gives_its_recorded_count():
    names = sorted(n for n in os.listdir("/traces") if n.endswith(".txt"))
    assert len(names) >= 3, names
    for name in names:
        meta, rows = load("/traces/" + name)
        app, frames = replay(meta, rows)
        want = int(meta["expect"])
        assert app.decoder.position == want, (name, app.decoder.position, want)
        assert app.dial.position == want
        assert app.dial.rotation == want % 4
        if "edges" in meta:
            assert len(rows) == int(meta["edges"]), name
