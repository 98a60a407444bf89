"""A Lamport clock that never runs backwards, across restarts and power cuts.

Persisting every tick would cost an fsync per event, so the clock reserves blocks: the file holds
a ceiling, the clock hands out values below it, and only crossing the ceiling writes a new one
(atomically). After a crash the clock restarts at the last ceiling: values are skipped, never
reused. This is the same trick as a database sequence cache.
"""

from __future__ import annotations

from pathlib import Path

from gibsey.core.identity import write_atomic

BLOCK = 10_000
# A remote clock far ahead of ours is believed only this far: one buggy or hostile sender must
# not be able to push every node's clock to the end of the 63-bit range.
MAX_JUMP = 1_000_000_000
LIMIT = 2**63 - 1


class LamportClock:
    def __init__(self, path: Path, block: int = BLOCK) -> None:
        self._path = path
        self._block = block
        start = 0
        if path.exists():
            text = path.read_text().strip()
            start = int(text) if text.isdigit() else 0
        self._value = start
        self._ceiling = start
        self._reserve(start + block)

    def _reserve(self, ceiling: int) -> None:
        write_atomic(self._path, f"{ceiling}\n".encode())
        self._ceiling = ceiling

    @property
    def value(self) -> int:
        return self._value

    def _set(self, value: int) -> int:
        assert value <= LIMIT, "lamport clock exhausted"
        self._value = value
        if value >= self._ceiling:
            self._reserve(value + self._block)
        return value

    def tick(self) -> int:
        """Advance for a local event and return its timestamp."""
        return self._set(self._value + 1)

    def observe(self, remote: int) -> int:
        """Merge a received timestamp: max(local, remote) + 1, with the jump bounded."""
        bounded = min(max(remote, 0), self._value + MAX_JUMP)
        return self._set(max(self._value, bounded) + 1)
