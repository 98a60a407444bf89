"""A Lamport clock that never runs backwards, across restarts and power cuts.

Persisting every tick would cost an fsync per event, so the clock reserves blocks: the file holds
a ceiling, the clock hands out values below it, and only crossing the ceiling writes a new one
(atomically). After a crash the clock restarts at the last ceiling: values are skipped, never
reused. This is the same trick as a database sequence cache.

A full or failing disk must not stop the node's events (a ritual needs no disk), so a ceiling
that cannot be written is reported (DiskHealth) and retried every tenth of a block while the clock
goes on in memory. The ceiling is renewed halfway through its block, which leaves half a block of
ticks covered by the ceiling already on disk while the disk refuses writes; only a crash after
the clock has run past that, on a disk still refusing writes, could reuse values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from gibsey.core.identity import write_atomic
from gibsey.core.storage import DiskHealth, StorageError

# Values reserved at a time. The ceiling is written (a file and two fsyncs) on the event loop,
# which a dial turn waits for: tens of ms on an SD card. At 10,000 it was every 5,000 events
# (every ~1,000 turns, the slowest turn of `gibsey bench vm`'s thousand); at a million, every
# 500,000 (hours of a busy gallery). What a crash skips (up to a block) costs nothing: 2**63
# values last millions of years even so, and peers' clocks take the jump (MAX_AHEAD).
BLOCK = 1_000_000
# A remote timestamp more than this far ahead of ours is not believed: the event is refused
# (LamportAhead; the router says `lamport_ahead`), never half-believed. Capping the jump instead
# would order the node's replies before their cause; believing it would let one buggy or hostile
# sender push the clock to the end of its 63-bit range. A billion is years of a busy gallery's
# events (a node's clock and its clients' never drift that far apart), and 9.2e9 such jumps,
# each accepted, are needed to exhaust the range.
MAX_AHEAD = 1_000_000_000
# ... and over time, others may move it forward by MAX_AHEAD at once, then by this much a second
# on average (a token bucket): a busy gallery's clocks advance a few hundred a second. Without it,
# anyone on the broker could push the clock a billion a message (an outside tester: 1,200 a
# second, two fsyncs each for the ceiling below, the 63-bit range gone in ~89 days, and then
# `_set`'s assertion in the router's path); with it, the range lasts millions of years and a
# pushed ceiling is written at most twice a second.
PUSH_PER_S = 10_000
LIMIT = 2**63 - 1
LAMPORT_FILENAME = "lamport"  # in the data directory: the clock's ceiling

log = logging.getLogger("gibsey.core")


class DamagedNumber(ValueError):
    """A file that should hold one number (written whole and renamed into place: never torn by
    a power cut) holds something else: the disk damaged it. `raw`: its first bytes."""

    def __init__(self, path: Path, raw: bytes) -> None:
        super().__init__(f"{path} is damaged (it holds {raw[:32]!r}, not a number)")
        self.raw = raw[:32]


def read_number(path: Path) -> int | None:
    """The number kept in `path` (as write_atomic wrote it: digits and a newline); None when
    there is no such file; DamagedNumber when it holds anything else (no UTF-8 included)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    text = raw.strip()
    if text.isdigit() and text.isascii():
        return int(text)
    raise DamagedNumber(path, raw)


def read_ceiling(path: Path) -> int:
    """The ceiling kept in `path`; 0 when there is none. A damaged one is said, and the clock
    starts again from 0: a node that cannot read its clock still runs, as with a damaged
    own-feed mark, and the technician learns why its events' lamports went back."""
    try:
        return read_number(path) or 0
    except DamagedNumber as exc:
        _say_restart(exc)
        return 0


def _say_restart(exc: DamagedNumber) -> None:
    log.warning(
        "%s: the Lamport clock starts again from 0, so this node's next events may be "
        "ordered before its earlier ones",
        exc,
    )


class LamportAhead(ValueError):
    """A received timestamp too far ahead of this node's clock to believe."""


class LamportClock:
    def __init__(
        self,
        path: Path,
        block: int = BLOCK,
        disk: DiskHealth | None = None,
        now: Callable[[], float] = time.monotonic,  # a test moves it instead of waiting
        say_damage: bool = True,  # False: the owner says it (and may resume_past)
    ) -> None:
        self._path = path
        self._block = block
        self._disk = disk
        self._now = now
        self._push_budget = float(MAX_AHEAD)  # how far others may move the clock now
        self._push_at = now()
        # Whether the ceiling was there to start from: None when the file was missing, the
        # damage when it held no number (emptied, overwritten), else the ceiling.
        self.found: int | DamagedNumber | None = None
        try:
            self.found = read_number(path)
        except DamagedNumber as exc:
            self.found = exc
            if say_damage:
                _say_restart(exc)
        start = self.found if isinstance(self.found, int) else 0
        self._value = start
        self._ceiling = start
        self._renew_at = start
        self._reserve(start + block)

    def _reserve(self, ceiling: int) -> None:
        try:
            write_atomic(self._path, f"{ceiling}\n".encode())
        except StorageError as exc:
            # Go on in memory; try again a tenth of a block later (not at every tick).
            self._renew_at = self._value + max(1, self._block // 10)
            if self._disk is not None:
                self._disk.refused_write(exc)
            return
        self._ceiling = ceiling
        self._renew_at = ceiling - self._block // 2
        if self._disk is not None:
            self._disk.wrote()

    @property
    def value(self) -> int:
        return self._value

    def resume_past(self, floor: int) -> bool:
        """Move the clock up to `floor` (the next tick is past it) when it is below: a clock
        that lost its ceiling resumes past the highest Lamport the node can see of its own.
        Its ceiling is written at once. True when it moved."""
        if floor <= self._value:
            return False
        assert floor < LIMIT, "lamport clock exhausted"
        self._value = floor
        self._reserve(floor + self._block)
        return True

    def _set(self, value: int) -> int:
        assert value <= LIMIT, "lamport clock exhausted"
        self._value = value
        if value >= self._renew_at:
            self._reserve(value + self._block)
        return value

    def tick(self) -> int:
        """Advance for a local event and return its timestamp."""
        return self._set(self._value + 1)

    def observe(self, remote: int) -> int:
        """Merge a received timestamp: max(local, remote) + 1, always greater than `remote`.
        One more than MAX_AHEAD ahead raises LamportAhead and leaves the clock as it was."""
        if remote > self._value + MAX_AHEAD:
            raise LamportAhead(
                f"lamport {remote} is more than {MAX_AHEAD} ahead of this node's {self._value}"
            )
        jump = remote - self._value
        if jump > 0:
            now = self._now()
            self._push_budget = min(
                float(MAX_AHEAD), self._push_budget + (now - self._push_at) * PUSH_PER_S
            )
            self._push_at = now
            if jump > self._push_budget:
                raise LamportAhead(
                    f"lamport {remote} would move this node's clock {jump} ahead, more than "
                    f"others may now ({self._push_budget:.0f}: {MAX_AHEAD} at once, then "
                    f"{PUSH_PER_S} a second)"
                )
            self._push_budget -= jump
        return self._set(max(self._value, remote) + 1)
