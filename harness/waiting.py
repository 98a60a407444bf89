"""Waiting, with a deadline, on what the harness starts: a condition, a port, a process's end.

Every harness module waits the same way and fails the same way: `GalleryError`, which says what
it waited for and how long (a timeout alone tells the next person nothing).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


class GalleryError(RuntimeError):
    """Something the harness started did not do what was waited for (raised by every module of
    gibsey.harness: a broker, a relay, the MQTT watch, a node, the gallery)."""


def wait_until(pred: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.05) -> Any:
    """Poll `pred` until it returns something true; GalleryError after `timeout` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = _poll(pred, deadline, timeout_s, what)
        if got is not None:
            return got
        time.sleep(step_s)


async def until(pred: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.01) -> Any:
    """`wait_until` inside an event loop: the loop goes on (the node under test with it) while
    `pred` is polled."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = _poll(pred, deadline, timeout_s, what)
        if got is not None:
            return got
        await asyncio.sleep(step_s)


def _poll(pred: Callable[[], Any], deadline: float, timeout_s: float, what: str) -> Any:
    """`pred`'s answer if it is true; None to poll again; GalleryError once past `deadline`."""
    got = pred()
    if got:
        return got
    if time.monotonic() > deadline:
        raise GalleryError(f"timed out after {timeout_s:g}s waiting for {what}")
    return None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(
    port: int, timeout_s: float = 10.0, up: bool = True, host: str = "127.0.0.1", what: str = ""
) -> None:
    """Wait until host:port accepts connections (up) or refuses them (not up)."""
    what = what or f"port {port} on {host} to come {'up' if up else 'down'}"
    wait_until(lambda: port_open(port, host) == up, timeout_s, what, step_s=0.02)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM, timeout_s: float = 10.0
) -> int:
    """Send `sig` (None: the caller sent it already) and wait up to `timeout_s` for the process
    to end; SIGKILL it if it has not. Its exit status."""
    if proc.poll() is None:
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
