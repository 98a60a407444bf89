"""The dial application: pins -> decoder and button -> QDPI state -> frames.

Hardware comes in from outside, so the same class runs on the board (machine.Pin) and in the
tests (simulated pins): `pin_a`, `pin_b`, `pin_button` need `value()` and `irq(handler, trigger)`;
`ticks_ms()` is the millisecond clock; `send(line)` hands a frame line to every transport.

The encoder is read in the pin interrupt (both edges of both lines), which only updates the
decoder's integers; `poll()` runs in the main loop, takes the counted detents, reads the button
and sends frames. Nothing a frame needs is lost if the main loop is late: detents accumulate.
"""

from . import frame
from .button import LONG, SHORT, Button, ticks_diff
from .qdpi import QdpiDial
from .quad import QuadDecoder

TYPE_CHECKING = False
if TYPE_CHECKING:  # for mypy only: MicroPython has no typing module
    from collections.abc import Callable
    from typing import Any, Protocol

    class PinLike(Protocol):
        def value(self) -> int: ...


FIRMWARE = "gdial-1.0.0"


class DialApp:
    def __init__(
        self,
        cfg: "dict[str, Any]",
        pin_a: "PinLike",
        pin_b: "PinLike",
        pin_button: "PinLike",
        ticks_ms: "Callable[[], int]",
        send: "Callable[[str], object]",
    ) -> None:
        self.cfg = cfg
        self.a = pin_a
        self.b = pin_b
        self.btn = pin_button
        self.ticks_ms = ticks_ms
        self.send = send
        self.decoder = QuadDecoder(cfg["steps_per_detent"], 3, cfg["reverse"])
        self.button = Button(cfg["debounce_ms"], cfg["long_press_ms"])
        self.dial = QdpiDial(cfg["symbol"], cfg["symbols"], cfg["carry"])
        self.seq = 0
        self.sent = 0
        self.last_beat = 0
        self.decoder.reset(self._read_ab())

    def _read_ab(self) -> int:
        return (self.a.value() << 1) | self.b.value()

    def on_edge(self, pin: object = None) -> None:
        """Pin interrupt (both edges of A and B; the board registers it). Integer work only."""
        self.decoder.update((self.a.value() << 1) | self.b.value())

    def _emit(self, line: str) -> None:
        self.send(line)
        self.seq = (self.seq + 1) % frame.SEQ_MOD
        self.sent += 1

    def hello(self, boot: bool) -> None:
        d = self.dial
        self._emit(frame.hello(self.seq, self.cfg["dial_id"], FIRMWARE, d.symbol, d.rotation, boot))

    def start(self) -> None:
        self.last_beat = self.ticks_ms()
        self.hello(True)

    def poll(self) -> int:
        """One main-loop pass; returns how many frames it sent."""
        before = self.sent
        now = self.ticks_ms()
        d = self.dial
        n = self.decoder.take()
        if n and d.turn(n):
            self._emit(frame.rotate(self.seq, d.symbol, d.rotation, d.position))
        # Pulled up: pressed reads 0.
        ev = self.button.update(self.btn.value() == 0, now)
        if ev == LONG:
            self._emit(frame.press(self.seq, d.symbol, d.rotation, True))
            if d.cycle(1):
                self._emit(frame.rotate(self.seq, d.symbol, d.rotation, d.position))
        elif ev == SHORT:
            self._emit(frame.press(self.seq, d.symbol, d.rotation, False))
        if ticks_diff(now, self.last_beat) >= self.cfg["heartbeat_s"] * 1000:
            self.last_beat = now
            self.hello(False)
        return self.sent - before
