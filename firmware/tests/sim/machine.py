# A simulated `machine` module for the firmware tests under MicroPython (WebAssembly port):
# pins whose level the test drives, firing the registered interrupt handler on each edge the
# way the RP2040's GPIO interrupts do.


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, id, mode=0, pull=None):
        self.id = id
        self.level = 1 if pull == Pin.PULL_UP else 0
        self.handler = None
        self.trigger = 0
        self.edges = 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.drive(v)

    def irq(self, handler=None, trigger=12, hard=False):
        self.handler = handler
        self.trigger = trigger

    def drive(self, v):
        v = 1 if v else 0
        if v == self.level:
            return
        self.level = v
        self.edges += 1
        edge = Pin.IRQ_RISING if v else Pin.IRQ_FALLING
        if self.handler is not None and self.trigger & edge:
            self.handler(self)


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.fed = 0

    def feed(self):
        self.fed += 1


class Clock:
    """A millisecond clock the test moves by hand (time.ticks_ms stand-in)."""

    def __init__(self, start=0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, ms):
        self.now = (self.now + ms) % (1 << 30)
