"""Mosquitto as a process: write its configuration, start it, wait for its port, stop it.

One broker per gallery node (a Pi in a room runs its own), and the tests' and benchmarks'
brokers (tests/brokers.py re-exports this class). Configured for a test or a rehearsal:
anonymous, TCP_NODELAY on; or (`dropin=`) exactly as the image does, from the production drop-in
(images/mosquitto/gibsey.conf) under a main file like Debian's own /etc/mosquitto/mosquitto.conf
(persistence on, in this broker's folder), its listeners moved to this broker's ports, closed to
anonymous clients: its users, passwords and ACL made by first boot's own function in this
broker's folder (`url` logs in as the node, `url_as(user)` as any other client).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from gibsey.harness.ports import free_port
from gibsey.harness.waiting import GalleryError, stop_process, wait_port
from gibsey.node.image import firstboot

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BROKER_PORT = 1883  # inside a node's network namespace: the usual port
REPO = Path(__file__).resolve().parents[1]
PRODUCTION_DROPIN = REPO / "images" / "mosquitto" / "gibsey.conf"
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
        dropin: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        # dropin: run the image's configuration (Debian's main file says `persistence true`)
        self.dropin = dropin
        self.persistence = persistence or dropin is not None
        # the drop-in's listener ports -> this broker's (its 1883 is `port`)
        self.listeners: dict[int, int] = {}
        self.extra_conf = extra_conf
        self.passwords: dict[str, str] = {}  # user -> password, when the broker has users
        # own_session: a gallery keeps Ctrl-C in the terminal for itself to hand out
        self.own_session = own_session
        self.hosts = ["127.0.0.1"]  # where it listens; the first is the daemon's, the last ours
        self.prefix: list[str] = []  # the command prefix (netns: `ip netns exec NS`)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self._write_conf()

    def _write_conf(self) -> None:
        if self.dropin is not None:
            self._write_production_conf(self.dropin)
            return
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
            *_as_root(),
            self.extra_conf,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _write_production_conf(self, dropin: Path) -> None:
        """Debian's main file (persistence in this broker's folder, the drop-ins' folder
        included) and the drop-in itself, only its listeners moved to this broker's ports."""
        conf_d = self.workdir / "conf.d"
        conf_d.mkdir(exist_ok=True)
        # On a node every interface (as the image's drop-in says); here loopback only, unless
        # inside a node's own network namespace.
        bind = self.hosts[0] if len(self.hosts) == 1 else None
        text, self.listeners = rebind_listeners(dropin.read_text(), self.port, bind)
        # Its users and ACL as first boot makes them, in this broker's folder.
        auth = self.workdir / "auth"
        text = text.replace(f"/{firstboot.MQTT_BROKER_FILES}/", f"{auth}/")
        if f"{auth}/" in text:
            self.passwords = firstboot.mqtt_credentials(self.workdir / "secrets", auth)
        (conf_d / dropin.name).write_text(text)
        lines = [
            "# As Debian's /etc/mosquitto/mosquitto.conf, in this broker's folder",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            *_as_root(),
            self.extra_conf,
            f"include_dir {conf_d}",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def in_netns(self, prefix: list[str], host: str) -> None:
        """Run inside a network namespace (`prefix` runs a command there), on the usual port,
        reachable from outside at `host`."""
        self.prefix, self.port, self.hosts = prefix, BROKER_PORT, ["127.0.0.1", host]
        self._write_conf()

    @property
    def url(self) -> str:
        """Where the node's daemon (and a `gibsey` command beside it) reaches the broker: as
        the node's user when the broker has users (the production drop-in)."""
        return self.url_as("gibsey-node") if self.passwords else self.url_as(None)

    def url_as(self, user: str | None) -> str:
        """The broker's URL with `user`'s credentials (None: anonymous)."""
        if user is None:
            return f"mqtt://{self.hosts[0]}:{self.port}"
        return f"mqtt://{user}:{self.passwords[user]}@{self.hosts[0]}:{self.port}"

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


def _as_root() -> list[str]:
    # Started as root, Mosquitto becomes the `mosquitto` user, who cannot enter a test's temp
    # folder (0700, root's) to save its database: it then loses its sessions on every stop
    # and says so only in its log. The image's broker has its own folder, /var/lib/mosquitto.
    return ["user root"] if os.geteuid() == 0 else []


def rebind_listeners(dropin: str, port: int, host: str | None) -> tuple[str, dict[int, int]]:
    """The drop-in's text with its MQTT listener (1883) on `port` and any other listener (the
    WebSockets one) on a free port, bound to `host` (None: every interface); and which port
    went where."""
    moved: dict[int, int] = {}
    lines = []
    for line in dropin.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "listener" and words[1].isdigit():
            was = int(words[1])
            moved[was] = port if was == BROKER_PORT else free_port()
            line = f"listener {moved[was]}" + (f" {host}" if host else "")
        lines.append(line)
    return "\n".join(lines) + "\n", moved
