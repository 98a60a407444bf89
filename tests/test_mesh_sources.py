"""mesh/sources.py on descriptors that are no longer the listener's connections.

A monitor event is read late: its descriptor may be closed, or reused since by a file or by
another socket of the process (the gateway's, the broker's). Must hold: none of them is counted
or cut, and looking costs no descriptor.
"""

from __future__ import annotations

import os
import socket
import tempfile

from gibsey.mesh.sources import SourceCounts


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_descriptor_that_is_no_connection_of_ours_is_left_alone() -> None:
    counts = SourceCounts(port=1, most=1)  # port 1: none of these sockets is on it
    server = socket.create_server(("127.0.0.1", 0))
    other = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    with tempfile.TemporaryFile() as a_file, server, other, accepted:
        before = _open_fds()
        for _ in range(50):
            for fd in (a_file.fileno(), accepted.fileno(), 10_000):  # a file, another port, none
                assert counts.accepted(fd) is None
        assert _open_fds() == before
        assert not counts.open and not counts.cut
        other.sendall(b"still open")  # another port's connection was not cut
        assert accepted.recv(16) == b"still open"
