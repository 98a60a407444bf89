"""Free ports come from below the kernel's ephemeral range (where outgoing connections take
their local ports), bindable, and never twice from one process."""

from __future__ import annotations

import socket

from gibsey.harness import ports


def test_ports_avoid_the_ephemeral_range_and_are_not_repeated() -> None:
    start = ports._ephemeral_start()
    got = [ports.free_port() for _ in range(200)]
    assert len(set(got)) == len(got)
    if start - 1 - ports.LOWEST >= 1000:
        assert all(ports.LOWEST <= p < start for p in got)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", got[-1]))  # free, as promised


def test_a_port_taken_by_a_listener_is_not_handed_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not ports._bindable("127.0.0.1", port)
