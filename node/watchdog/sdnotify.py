"""The systemd notify protocol, spoken directly (it is one datagram per message).

systemd starts the node as `Type=notify` with NOTIFY_SOCKET set to a datagram socket (a path, or
an abstract name starting with '@') and, when the unit has WatchdogSec=, WATCHDOG_USEC. The node
sends READY=1 once it serves, STATUS=<line> for `systemctl status`, WATCHDOG=1 at half the
watchdog interval, and STOPPING=1 when it begins a clean stop. With no NOTIFY_SOCKET every call
does nothing, so the same daemon runs on a laptop.

The watchdog pings come from a task on the node's own event loop: if the loop is wedged (a
blocking call, a busy loop), the pings stop and systemd restarts the node. That is the point;
a ping from a separate thread would keep a wedged node alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("gibsey.sdnotify")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        )
        if pid.isdigit() and int(pid) != os.getpid():
            self.watchdog_s = None  # the watchdog is meant for another process
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram; False when there is no systemd to tell."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    async def watchdog_loop(self) -> None:
        """Ping at half the interval, from the event loop (so a wedged loop stops the pings)."""
        if self.watchdog_s is None or not self.enabled:
            return
        interval = self.watchdog_s / 2
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
