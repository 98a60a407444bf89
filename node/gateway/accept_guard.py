"""One failed accept a second, not thousands, when the process has no file descriptor left.

asyncio's accept loop (`BaseSelectorEventLoop._accept_connection`, CPython 3.11) takes up to
`backlog` connections a wakeup (uvicorn's: 2048). When `accept()` fails for want of a resource
(EMFILE: the process is out of descriptors), it stops watching the socket and schedules one
retry a second later, but then goes on to the next `accept()` of the same wakeup, which fails
the same way and schedules another retry: up to `backlog` failures and retries a wakeup, and
the retries wake it again (CPython gh-151615, fixed upstream in 2026, not in 3.11). An outside
tester who held the mesh port's connections until the node ran out of descriptors saw 1.3
million failed accepts in 20 s: a whole core, while the gateway answered nobody.

`install` makes the listening socket, as one wakeup's accept loop sees it, report an empty
queue (BlockingIOError, the loop's own way out) after its first resource error: one failure
and one retry a wakeup, as upstream's fix does. Where the loop has no such method (another
event loop, a later layout) nothing is changed.
"""

from __future__ import annotations

import errno
import socket
from asyncio import selector_events
from typing import Any

# What asyncio's accept loop treats as running out of a resource (and retries a second later).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_ORIGINAL = getattr(selector_events.BaseSelectorEventLoop, "_accept_connection", None)


class _OneResourceError:
    """The listening socket for one wakeup of the accept loop: after an accept ran out of a
    resource, the queue looks empty, so the loop leaves with the one retry it scheduled."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ran_out = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self.ran_out:
            raise BlockingIOError(errno.EAGAIN, "a retry is scheduled")
        try:
            return self.sock.accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self.ran_out = True
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def __getattr__(self, name: str) -> Any:  # anything else the loop asks (its repr, a log)
        return getattr(self.sock, name)


def _accept_connection(
    self: selector_events.BaseSelectorEventLoop,
    protocol_factory: Any,
    sock: socket.socket | _OneResourceError,
    *args: Any,
    **kwargs: Any,
) -> None:
    # The retry asyncio scheduled hands back the wrapper it was given: unwrapped, so each
    # wakeup starts with a fresh one.
    real = sock.sock if isinstance(sock, _OneResourceError) else sock
    assert _ORIGINAL is not None
    _ORIGINAL(self, protocol_factory, _OneResourceError(real), *args, **kwargs)


def install() -> bool:
    """Guard every selector event loop of this process (idempotent); False where there is no
    accept loop of the known shape to guard."""
    if _ORIGINAL is None:
        return False
    setattr(selector_events.BaseSelectorEventLoop, "_accept_connection", _accept_connection)  # noqa: B010 - a private method typeshed does not list
    return True
