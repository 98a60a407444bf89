"""Free TCP ports for servers started on this machine: a rehearsal's brokers, relays and mesh
endpoints, the tests' and benchmarks' brokers.

Binding to port 0 hands out a port from the kernel's ephemeral range, the same range every
outgoing connection takes its local port from. Between choosing a port and the server binding
it, one of the hundreds of outgoing connections of a 10-node rehearsal can take it (seen: a
broker that never came up, a mesh that never formed). So ports are drawn at random from below
the ephemeral range, where no outgoing connection lands, checked by binding, and never handed
out twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

LOWEST = 20_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port no server here listens on, outside the ephemeral range when there is room."""
    top = _ephemeral_start() - 1
    if top - LOWEST >= 1000:
        for _ in range(500):
            port = random.randint(LOWEST, top)
            with _lock:
                if port in _given:
                    continue
            if _bindable(host, port):
                with _lock:
                    _given.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below: the kernel's
        s.bind((host, 0))
        return int(s.getsockname()[1])
