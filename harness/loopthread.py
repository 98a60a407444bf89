"""An asyncio event loop in a daemon thread of its own, for the harness's synchronous callers.

The rehearsal, the tests and the benches drive a gallery from plain threads (a visitor's thread,
the live view, a test body), while what watches a node runs on asyncio: the loopback mesh relays
(relay.py) and the MQTT connection on a node's broker (watch.py, core/mqtt.py's `Connection`).
Each such object owns one `LoopThread`; a caller hands work to it with `run` (a coroutine, waited
for) or `call_soon` (a plain callback, not waited for), never touching the loop's objects itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

STOP_TIMEOUT_S = 5.0


class LoopThread:
    """`loop` runs forever in a daemon thread named `name` until `stop()`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Run `coro` on the loop and return its result; TimeoutError (the coroutine cancelled)
        after `timeout_s`. From any thread but the loop's own (there it would wait on itself)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Call `callback(*args)` on the loop's thread, in the order of the calls; returns at
        once."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Cancel what still runs on the loop, stop it and wait for its thread; the loop is
        closed once the thread ended."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):  # a loop that is stuck is stopped all the same
            self.run(_cancel_tasks(), timeout_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_tasks() -> None:
    """Cancel every other task on this loop and wait for them to end, and for the loop's worker
    threads: nothing is left pending when the loop closes."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_default_executor()  # its threads, e.g. a connect
