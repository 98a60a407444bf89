"""Which address each connection open on the mesh port comes from, to cut one address's flood.

A stranger holding idle connections to the mesh port (to take the node's file descriptors) used
to be stopped only by closing the port for everyone (the node's FLOODED): while three machines
flooded it, it was closed most of the time, and a peer that only dials us was cut off. A flood
comes from few addresses, and a peer holds one connection (a gallery behind one NAT, at most
max_peers): so the connections one address holds beyond that are cut as they are accepted.

libzmq owns the listener's connections and says them only as monitor events with their file
descriptor. A connection is looked at through a duplicate of that descriptor: its local port
tells it is still our listener's (an event read late may name a descriptor closed and reused
since: never one of the gateway's or the broker's), its peer name gives the address, and a
shutdown() through the duplicate ends the connection itself, which libzmq then sees closed by
the other side and closes (and says) as any other. The duplicate is closed at once.
"""

from __future__ import annotations

import os
import socket
from collections import Counter

# Connections cut and not yet said closed, at most (each is one of the process's descriptors
# until libzmq closes it, so more means disconnects went unread: forgotten, not grown).
MAX_CUT = 4096


def listening_port(endpoint: str) -> int:
    """The port of a bound ZeroMQ endpoint (`tcp://10.0.0.2:7470`)."""
    return int(endpoint.rsplit(":", 1)[1])


class SourceCounts:
    """Open connections on the listener by remote address (by fd, from the monitor's events),
    at most `most` an address; bounded by the process's descriptors, as the fds are."""

    def __init__(self, port: int, most: int) -> None:
        self.port = port
        self.most = most
        self.address: dict[int, str] = {}  # fd -> remote address
        self.open: Counter[str] = Counter()
        self.cut: set[int] = set()  # fds of connections cut here, until their disconnect

    def accepted(self, fd: int) -> str | None:
        """A connection accepted on `fd`: its address if that address already holds `most`
        (the connection is then cut, and not counted), else None."""
        self.ended(fd)  # an fd reused before its disconnect was read
        if len(self.cut) >= MAX_CUT:  # disconnects lost (never seen here): start again
            self.cut.clear()
        try:
            copy = os.dup(fd)
        except OSError:
            return None  # closed already
        try:
            dup = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)  # no socket (the fd reused by a file since): not ours
            return None
        with dup:
            try:
                if dup.getsockname()[1] != self.port:
                    return None  # reused by another socket of this process: not ours
                address = str(dup.getpeername()[0])
            except OSError:
                return None  # closed by its peer already
            if self.open[address] >= self.most:
                try:
                    dup.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.cut.add(fd)
                return address
        self.address[fd] = address
        self.open[address] += 1
        return None

    def ended(self, fd: int) -> bool:
        """The connection on `fd` closed; True when it was one cut here."""
        address = self.address.pop(fd, None)
        if address is not None:
            self.open[address] -= 1
            if not self.open[address]:
                del self.open[address]
        if fd in self.cut:
            self.cut.discard(fd)
            return True
        return False

    def clear(self) -> None:
        """The port closed: every connection on it with it."""
        self.address.clear()
        self.open.clear()
        self.cut.clear()
