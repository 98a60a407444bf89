"""When the ledger's open batch commits: a thread waiting for the open batch's deadline.

The store (store.py) keeps an open SQLite batch that commits BATCH_IDLE_S after its last write
or at its age limit. That deadline moves at every write; it was a `threading.Timer` cancelled
and started again per write: a thread made and ended for every ledger transaction, five a
second on a busy node (each with its own stack, and a wake-up of the cancelled one). This is
one thread per open batch, which sleeps until the current deadline under the store's own lock,
is told when the deadline moves, and ends once nothing is due (so a store nobody closed is not
kept alive by it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("gibsey.ledger")


class BatchClock:
    """Calls `due(batch_id)` once the deadline set by `arm` passes, unless `disarm`ed or armed
    again first. Every method is called with `lock` held (the store's), and `due` runs with it
    held: a commit never races a write."""

    def __init__(self, lock: threading.RLock, due: Callable[[int], None], name: str) -> None:
        self._wake = threading.Condition(lock)
        self._due = due
        self._name = name
        self._at: float | None = None  # time.monotonic() of the deadline; None: nothing due
        self._batch_id = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, after_s: float, batch_id: int) -> None:
        """Call `due(batch_id)` in `after_s` (the deadline set before, if any, is dropped)."""
        self._at, self._batch_id = time.monotonic() + after_s, batch_id
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        else:
            self._wake.notify()

    def disarm(self) -> None:
        """Nothing is due (the batch committed): the thread ends at the deadline it slept for,
        unless `arm` sets another first."""
        self._at = None

    def close(self) -> None:
        """End the thread (it ends once the caller lets go of the lock)."""
        self._closed, self._at = True, None
        self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while not self._closed and self._at is not None:
                left = self._at - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                self._at = None
                try:
                    self._due(self._batch_id)
                except Exception:  # said; the batch stays open, its entries in the entry log
                    log.exception("ledger: the timed commit of a batch failed")
            self._thread = None  # the next `arm` starts another
