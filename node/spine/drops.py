"""What the node drops, said once per reason per interval, with the count.

Each part counts its own drops where they happen, on the hot path, for the price of an integer
increment: the spine's outbox (`SpineStats.outbox_dropped`), the router's handler queues
(`RouterStats.dropped`), the safety inverter's throttles. The node samples those totals once a
second (node/daemon.py) into its retained status and /metrics, and `DropAlerts` decides when a
`safety/alert` says so: at most one per reason per interval, carrying how many were dropped since
the last one. A flood of drops is then one alert every interval, never an alert (or a log line)
per dropped event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

# Drop reasons: the keys of Node.drops(), the `reason` label of gibsey_dropped in /metrics and
# the `reason` of the safety/alert that reports them.
OUTBOX_FULL = "outbox_full"
HANDLER_OVERLOADED = "handler_overloaded"
THROTTLED = "throttled"


class Due(NamedTuple):
    reason: str
    dropped: int  # since the last alert for this reason (or the start)
    total: int  # since the start
    since_s: float  # how long ago that last alert was (or the start)


class DropAlerts:
    """Which drop reasons to alert now: one whose total grew, at most once per `interval_s`."""

    def __init__(self, interval_s: float, now: float) -> None:
        self.interval_s = interval_s
        self._started = now
        self._said: dict[str, int] = {}  # reason -> total when last alerted
        self._said_at: dict[str, float] = {}

    def due(self, totals: Mapping[str, int], now: float) -> list[Due]:
        """The reasons to say now (each then counts as said)."""
        out = []
        for reason, total in totals.items():
            said = self._said.get(reason, 0)
            last = self._said_at.get(reason)
            if total <= said or (last is not None and now - last < self.interval_s):
                continue
            since = now - (self._started if last is None else last)
            out.append(Due(reason, total - said, total, since))
            self._said[reason] = total
            self._said_at[reason] = now
        return out
