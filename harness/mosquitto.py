"""Mosquitto as a process: write its configuration, start it, wait for its port, stop it.

One broker per gallery node (a Pi in a room runs its own), and the tests' and benchmarks'
brokers (tests/brokers.py re-exports this class). Configured as the image configures it:
anonymous, TCP_NODELAY on.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from gibsey.harness.ports import free_port
from gibsey.harness.waiting import GalleryError, stop_process, wait_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BROKER_PORT = 1883  # inside a node's network namespace: the usual port
STOP_TIMEOUT_S = 10.0


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:<port> (a free one unless given), optionally persisting
    sessions across restarts; or (in_netns) inside a node's namespace on 127.0.0.1:1883 and the
    node's host-link address."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        persistence: bool = False,
        extra_conf: str = "",
        *,
        own_session: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_conf = extra_conf
        # own_session: a gallery keeps Ctrl-C in the terminal for itself to hand out
        self.own_session = own_session
        self.hosts = ["127.0.0.1"]  # where it listens; the first is the daemon's, the last ours
        self.prefix: list[str] = []  # the command prefix (netns: `ip netns exec NS`)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [
            *(f"listener {self.port} {host}" for host in self.hosts),
            "allow_anonymous true",
            # Without this Mosquitto leaves Nagle's algorithm on, and every small QoS 1 message
            # waits out the peer's delayed ACK: ~40 ms per hop on loopback (measured).
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            self.extra_conf,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def in_netns(self, prefix: list[str], host: str) -> None:
        """Run inside a network namespace (`prefix` runs a command there), on the usual port,
        reachable from outside at `host`."""
        self.prefix, self.port, self.hosts = prefix, BROKER_PORT, ["127.0.0.1", host]
        self._write_conf()

    @property
    def url(self) -> str:
        """Where the node's daemon (and a `gibsey` command beside it) reaches the broker."""
        return f"mqtt://{self.hosts[0]}:{self.port}"

    @property
    def host(self) -> str:
        """Where this process reaches the broker."""
        return self.hosts[-1]

    def start(self) -> Mosquitto:
        if not Path(MOSQUITTO).exists():
            raise GalleryError(
                "mosquitto is not installed (apt-get install mosquitto; `make test` installs it)"
            )
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, MOSQUITTO, "-c", str(self.conf)],
                stdout=log,
                stderr=log,
                start_new_session=self.own_session,
            )
        wait_port(self.port, host=self.host, what=f"mosquitto on {self.host}:{self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it with `sig` (SIGKILL after STOP_TIMEOUT_S) and wait until its port is closed."""
        if self.proc is None:
            return
        stop_process(self.proc, sig, STOP_TIMEOUT_S)
        self.proc = None
        wait_port(self.port, up=False, host=self.host)

    def restart(self) -> None:
        self.stop()
        self.start()
