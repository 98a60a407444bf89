"""Events per second over a sliding window, for the status line and the dashboard."""

from __future__ import annotations

import collections
import time


class RateMeter:
    def __init__(self, window: float = 5.0) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def sample(self, total: int, now: float | None = None) -> float:
        """Record the running total; return the rate over the window."""
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        if now - t0 <= 0:
            return 0.0
        return (total - c0) / (now - t0)
