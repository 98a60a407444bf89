"""A debounced push button with short and long presses.

`update(pressed, now_ms)` is called from the main loop (or on every pin edge) with the raw level
and a millisecond clock (`time.ticks_ms()` on the board, wrapping: differences are taken with
`ticks_diff`). A level must stay put for `debounce_ms` before it counts. A press held for
`long_ms` reports LONG at once, while still held (the visitor sees the glyph change under their
finger); releasing it then reports nothing. A shorter press reports SHORT on release.
"""

NONE = 0
SHORT = 1
LONG = 2

TICKS_PERIOD = 1 << 30  # time.ticks_ms() wraps at 2**30 on the RP2040 port


def ticks_diff(a: int, b: int) -> int:
    """a - b on a wrapping millisecond clock (time.ticks_diff, also for CPython)."""
    half = TICKS_PERIOD // 2
    return ((a - b + half) % TICKS_PERIOD) - half


class Button:
    def __init__(self, debounce_ms: int = 20, long_ms: int = 800):
        self.debounce_ms = debounce_ms
        self.long_ms = long_ms
        self.raw = False
        self.raw_since = 0
        self.pressed = False  # debounced
        self.pressed_at = 0
        self.long_fired = False

    def update(self, pressed: bool, now_ms: int) -> int:
        if pressed != self.raw:
            self.raw = pressed
            self.raw_since = now_ms
        if self.raw != self.pressed and ticks_diff(now_ms, self.raw_since) >= self.debounce_ms:
            self.pressed = self.raw
            if self.pressed:
                self.pressed_at = self.raw_since
                self.long_fired = False
            elif not self.long_fired:
                return SHORT
        if self.pressed and not self.long_fired:
            if ticks_diff(now_ms, self.pressed_at) >= self.long_ms:
                self.long_fired = True
                return LONG
        return NONE
