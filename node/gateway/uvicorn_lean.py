"""uvicorn as the daemon imports it: its Config and Server, without `uvicorn/__init__.py`.

That `__init__` imports uvicorn.main (for `uvicorn.run` and the command line), and with it
click, and through the reload and worker supervisors multiprocessing: 0.85 MiB resident that a
server embedded in the node never uses (`gibsey bench footprint`, the card's python3; what puts
a node with a mesh on a Pi under the 60 MiB of issue 19). Python runs a package's `__init__`
before any of its modules, and uvicorn has no API around it, so the package module is made here
from its own spec with its `__init__` not run, and Config and Server are imported from their
modules. Anything else asked of the package (`uvicorn.run`, `uvicorn.__version__`: a test or a
tool in the same process) runs the real `__init__` then, once, and is answered from it: the
package is whole from then on.

Where uvicorn was imported already (a test, a tool), or its layout is not the pinned one
(pyproject.toml), it is imported as it comes: only the memory saved is lost
(tests/test_daemon_footprint.py says so).

Its h11 protocol is the gateway's, with guards uvicorn lacks (`guarded_h11`): a deadline for a
request's head, a bound on the connections one address holds open at once, and, when every
connection slot is taken, the oldest still waiting for its head closed for a new one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import h11

_PACKAGE = "uvicorn"


def _without_init() -> None:
    """Put a uvicorn package whose `__init__` has not run in sys.modules, with Config and
    Server; leave sys.modules as it was if anything is not as expected."""
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        # A name only `__init__` sets: run it now, in this same module object, and answer.
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[_PACKAGE] = package
    try:
        from uvicorn.config import Config
        from uvicorn.server import Server
    except ImportError:  # not the pinned uvicorn's layout: as it comes
        for name in [m for m in sys.modules if m == _PACKAGE or m.startswith(_PACKAGE + ".")]:
            del sys.modules[name]
        return
    # What the modules of uvicorn itself take from the package (lifespan/on.py: `from uvicorn
    # import Config`), set before any of them is imported.
    package.Config = Config  # type: ignore[attr-defined]
    package.Server = Server  # type: ignore[attr-defined]


_without_init()

from uvicorn.config import Config  # noqa: E402 (after the package is put in place)
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.server import Server  # noqa: E402

__all__ = [
    "HEAD_TIMEOUT_S",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "Config",
    "GuardedH11Protocol",
    "Server",
    "guarded_h11",
]

# A connection has this long to deliver a whole request head (request line and headers), from
# when it is made or from the first byte of its next request. A browser, curl or Prometheus
# sends its head in one write, in milliseconds even over a poor Wi-Fi: only a client that holds
# connections open on purpose (slowloris) comes near it.
HEAD_TIMEOUT_S = 10.0
# Connections one address may hold open at once: a gallery's dashboards (their live streams are
# bounded lower, routes/events.py) and its Prometheus are a handful of clients with a few
# connections each. Past it, a new connection from that address is closed at once, so that one
# stranger cannot take every slot of the gateway's limit_concurrency (part.py) for as long as a
# head may take, leaving everyone else 503s.
MAX_CONNECTIONS_PER_ADDRESS = 32

Refused = Callable[[str, str], None]  # (reason, detail): the gateway's paced log and alert


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, which times out only an idle keep-alive connection (after a
    response): one that sends part of a request head and then nothing is kept for ever, and
    counts toward limit_concurrency, so a stranger's 256 such sockets left the node answering
    503 to everyone. This one closes a connection whose head is not whole within HEAD_TIMEOUT_S,
    and one past MAX_CONNECTIONS_PER_ADDRESS at once; `guarded_h11` makes each gateway's."""

    # Address -> connections open from it. Only the event loop's thread touches it, and an
    # address goes when its last connection closes: it is as large as the connections open.
    peers: ClassVar[dict[str, int]]
    # Connections still waiting for a whole request head, oldest first (their deadlines run).
    waiting: ClassVar[dict[GuardedH11Protocol, None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted: str | None = None  # the address this connection counts for in `peers`

    def refused(self, reason: str, detail: str) -> None:
        raise NotImplementedError  # each gateway's subclass says it: guarded_h11

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # first: connection_lost needs what it sets
        address = self.client[0] if self.client else ""
        held = self.peers.get(address, 0)
        if held >= MAX_CONNECTIONS_PER_ADDRESS:
            transport.close()
            self.refused(
                "http_too_many_connections",
                f"{address or 'a client'} holds {held} connections, the most one address may: "
                "a new one was closed",
            )
            return
        self.peers[address] = held + 1
        self._counted = address
        self._arm_head_timer()  # a connection that sends nothing at all is timed too
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            self._shed_for_this_one()

    def _shed_for_this_one(self) -> None:
        """Every slot of limit_concurrency is taken: the oldest connection still waiting for
        its request head is closed, so this one is served. A browser sends its head in
        milliseconds, a stranger holding sockets never does, so it is theirs that go: 8
        addresses at the per-address bound (8 x 32 = 256) left everyone else 503s for as long
        as they kept reopening. When every slot is serving a request, nothing is closed (the
        new request is answered 503, as before)."""
        oldest = next((c for c in self.waiting if c is not self), None)
        if oldest is None:
            return
        oldest._disarm_head_timer()
        oldest.transport.close()
        self.connections.discard(oldest)  # its slot is free now, not at its connection_lost
        self.refused(
            "http_connections_shed",
            f"all {self.limit_concurrency} connections of the gateway were taken: the oldest "
            f"still waiting for a request head (from {oldest._counted or 'a client'}) was "
            "closed for a new one",
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._counted is not None:
            left = self.peers[self._counted] - 1
            if left:
                self.peers[self._counted] = left
            else:
                del self.peers[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()  # a head is whole (or the connection failed)
        elif self.conn.trailing_data[0]:
            # Part of the next request's head is here (the keep-alive timer, which data stops,
            # timed the wait for it): the deadline runs from its first byte, more does not
            # extend it.
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)
            self.waiting[self] = None

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
            del self.waiting[self]

    def _head_timed_out(self) -> None:
        self._head_timer = None
        del self.waiting[self]
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        self.transport.close()
        address = self._counted or "a client"
        self.refused(
            "http_slow_request",
            f"{address} sent no whole request head within {HEAD_TIMEOUT_S:g} s: "
            "its connection was closed",
        )


def guarded_h11(refused: Refused) -> type[GuardedH11Protocol]:
    """The h11 protocol class of one gateway (uvicorn's `Config(http=...)`): its own count of
    connections per address, and each connection it closes said through `refused` (the
    gateway's state.refused: a log line and a safety/alert at most once a minute per reason,
    with the count, never a line per connection)."""

    class GatewayH11(GuardedH11Protocol):
        peers: ClassVar[dict[str, int]] = {}
        waiting: ClassVar[dict[GuardedH11Protocol, None]] = {}

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logger = busy_log  # type: ignore[assignment]

        def refused(self, reason: str, detail: str) -> None:
            refused(reason, detail)

    busy_log = _BusyLog(refused)

    return GatewayH11


class _BusyLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """uvicorn's "uvicorn.error" logger for the gateway's h11 protocol, but its "Exceeded
    concurrency limit." (a line per request answered 503 while every slot is taken: 727 lines a
    minute under a stranger's flood) said as the gateway's refusals are: paced, with the count
    (`http_busy`)."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(logging.getLogger("uvicorn.error"))
        self._refused = refused

    @property
    def level(self) -> int:  # h11_impl reads it to skip its trace lines
        return int(self.logger.level)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg == "Exceeded concurrency limit.":
            self._refused(
                "http_busy", "every connection of the gateway was serving: a request got 503"
            )
            return
        super().warning(msg, *args, **kwargs)
