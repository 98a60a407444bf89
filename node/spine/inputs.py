"""The bound on visitors' inputs (turns and questions), whatever names they carry.

A visitor's turn names its actor and its source (`GlyphRotated.source`), and both are chosen by
whoever publishes it: on a gallery's Wi-Fi a script can send 20,000 turns under 20,000 names, and
a throttle keyed by name alone then never refuses one (issue 16: ~6,500 mints written). So the
node bounds its visitors' inputs twice, with token buckets:

* per source: a sender that keeps one source name (a dial, a phone's page) is held to its own
  rate, before it can spend the node's budget, so it cannot starve the others. A source name
  that came from the broker is kept apart from the same name on an input this node sent itself
  (its dial over serial, its gateway with the token), so claiming the dial's name does not spend
  the dial's budget. Names can be forged, so this is fairness, not the bound;
* node-wide: every input, whatever its names, spends one token of the node's budget. This is
  the bound: the work the node does for visitors per second is at most this, plus one burst.

A refused input costs a dictionary lookup and a counter; the node says how many once per
interval (node/spine/drops.py), never once per input.
"""

from __future__ import annotations

import collections
import time

BURST_S = 10.0  # a bucket holds this many seconds' worth of its rate
MAX_SOURCES = 4096  # source buckets kept (the least recently used is forgotten first)


class KeyedBuckets:
    """Token buckets by key, `rate_per_s` each up to `burst`, at most `max_keys` of them. An
    OrderedDict, so forgetting the least recently used key is O(1) however many names pass."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


class VisitorInputs:
    """The node's budget for visitors' inputs: `admit()` before any work is done for one."""

    def __init__(
        self, per_second: float, per_source_per_second: float, max_sources: int = MAX_SOURCES
    ) -> None:
        self.per_second = per_second
        self.per_source_per_second = per_source_per_second
        self._node = KeyedBuckets(per_second, max(1.0, per_second * BURST_S), 1)
        self._sources = KeyedBuckets(
            per_source_per_second, max(1.0, per_source_per_second * BURST_S), max_sources
        )
        self.admitted = 0
        self.refused_node = 0  # over the node-wide bound
        self.refused_source = 0  # over a source's bound

    @property
    def refused(self) -> int:
        return self.refused_node + self.refused_source

    def admit_source(self, source: str, here: bool, now: float | None = None) -> str | None:
        """The per-source bound: None, or why the input is refused. `here`: this node sent the
        input itself (its names are its own), not a client of the broker."""
        t = time.monotonic() if now is None else now
        if self._sources.allow(("here:" if here else "broker:") + source, t):
            return None
        self.refused_source += 1
        return f"throttled: source {source[:64]!r} sends over {self.per_source_per_second:g}/s"

    def admit(self, now: float | None = None) -> str | None:
        """The node-wide bound: None (one token spent), or why the input is refused."""
        t = time.monotonic() if now is None else now
        if self._node.allow("", t):
            self.admitted += 1
            return None
        self.refused_node += 1
        return f"throttled: the node takes at most {self.per_second:g} visitor inputs/s"

    def describe(self) -> str:
        """What was refused since the node started, by bound, for the node's `throttled` alert.
        The counts are totals and say so: the alert opens with the count of its own interval
        (`N dropped in the last 10s (M since the start): ...`), and an unlabelled breakdown
        after it read as that interval's. The caller may go on with more bounds' totals
        (`, K over an actor's`), which the same "since the start" covers."""
        return (
            f"since the start, {self.refused_node} over the node's {self.per_second:g} "
            f"inputs/s, {self.refused_source} over a source's {self.per_source_per_second:g}/s"
        )
