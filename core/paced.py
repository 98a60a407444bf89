"""Say what strangers cause without a log line each: the first of a kind at once, then at most one
line per interval per kind, with how many more came and the last of them as a sample.

A node on an SD card logs to a journal that a stranger could otherwise fill (and wear) with one
line per refused message: the mesh's refused connections (mesh/node.py) and the router's refused
events (node/spine/router.py) are said through this. Samples are made printable first: a
message's id or actor may hold a newline, which would start a forged line of the log.

Not node/spine/drops.py's DropAlerts, which paces alerts alike from totals sampled once a second
(and which the mesh, below the node, may not import): a refusal here is said as it happens, the
first with its sample. `clock` is injectable so a test passes the interval by moving it, not by
waiting a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# C0 and C1 control characters (newlines among them) and DEL, escaped as \xNN in a sample.
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str, limit: int = 200) -> str:
    """`text` (cut to `limit` characters) with its control characters escaped: one log line."""
    return text[:limit].translate(_UNPRINTABLE)


@dataclass
class _Held:
    """One kind (of one peer, for a mesh dial): when a line last said it, and what came since
    without a line."""

    said_at: float
    more: int = 0
    last: str = ""  # the latest of those, the line's sample
    total: int = 1


class PacedLog:
    """The first of each kind at once, then at most one line per `interval_s` per kind with the
    count; lines due while no more come are said by `flush` (call it every second or so). The
    kinds must be few (a reason, a peer among max_peers): one entry is kept per kind."""

    def __init__(
        self,
        logger: logging.Logger,
        prefix: str,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.prefix = prefix
        self.interval_s = interval_s
        self.clock = clock
        self._held: dict[tuple[str, str], _Held] = {}

    def note(self, what: str, sample: str, about: str = "") -> None:
        """One of kind `what` (`about`: a peer, for kinds said per peer)."""
        now = self.clock()
        held = self._held.get((what, about))
        if held is None:
            self._held[(what, about)] = _Held(now)
            self.log.warning(
                "%s%s: %s (more of these: one line per %g s at most)",
                self.prefix,
                what,
                printable(sample),
                self.interval_s,
            )
            return
        held.more += 1
        held.total += 1
        held.last = sample
        self._say(what, held, now)

    def flush(self, *, force: bool = False) -> None:
        """Say each kind whose line is due (`force`: each with any held back, as a part stops)."""
        now = self.clock()
        for (what, _), held in self._held.items():
            self._say(what, held, now, force=force)

    def _say(self, what: str, held: _Held, now: float, *, force: bool = False) -> None:
        if not held.more or (now - held.said_at < self.interval_s and not force):
            return
        self.log.warning(
            "%s%s: %d more in the last %.0f s, the last: %s (%d in all)",
            self.prefix,
            what,
            held.more,
            now - held.said_at,
            printable(held.last),
            held.total,
        )
        held.said_at, held.more = now, 0


class PacedRecords(logging.Filter):
    """A filter for another library's loggers (OpenTelemetry's exporter, core/trace.py), which
    log a line per failure: the first record of each kind (its logger and format string) passes,
    then at most one per `interval_s`, saying how many like it were held back. An OTLP collector
    that is switched off had the node log three lines every ~3 s for as long as it stayed off
    (~86,000 a night on a card's journal). Thread-safe: exporters log from their own thread."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}  # by kind: said when, how many since

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            held = self._held.get(kind)
            if held is None:
                if len(self._held) >= 256:  # kinds are a library's format strings: few
                    self._held.clear()
                self._held[kind] = _Held(now)
                return True
            if now - held.said_at < self.interval_s:
                held.more += 1
                return False
            more, since = held.more, now - held.said_at
            held.said_at, held.more = now, 0
        if more:
            record.msg = f"{record.msg} (and {more} like it unlogged in the {since:.0f} s before)"
        return True
