"""The embedded MQTT broker: what `gibsey up` runs when no broker is configured.

So that `gibsey up` on a laptop is one command. On a gallery node Mosquitto (the Debian package,
under systemd) is the broker and none of this starts. Two kinds (`[node] embedded_broker`):

* `MosquittoChild` (the default when `mosquitto` is installed; `make run` installs it): Mosquitto
  as a child process of the node, configured in the node's data directory (`mosquitto/`) with
  the image's settings where they apply (persistence, saving after every change, queue and size
  limits, TCP_NODELAY). Its store is in RAM (`broker_store`), as the image keeps Debian's
  Mosquitto's: saved after every change, it would be most of what a node writes to its card.
  It speaks MQTT 5 and holds a flood (issue 16: 20,000 turns in 10 s through amqtt left the
  node's outbox dropping what amqtt acknowledged too slowly). It dies
  with the node: the kernel sends it SIGKILL when the node's process ends, kill -9 included
  (`PR_SET_PDEATHSIG`, set between fork and exec in the thread that runs the event loop, which
  lives as long as the node); and it is started again if it dies while the node runs.
* `AmqttBroker` (the fallback): amqtt inside the node's own event loop; MQTT 3.1.1 only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gibsey.core.mqtt import MAX_MESSAGE_BYTES
from gibsey.core.paced import PacedLog

if TYPE_CHECKING:
    # amqtt (with websockets, yaml, transitions: ~4 MiB resident) loads only when it runs.
    from amqtt.broker import Broker

log = logging.getLogger("gibsey.broker")

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RESTART_FIRST_S = 0.5  # a Mosquitto that died is started again after this, doubling ...
RESTART_MAX_S = 10.0  # ... up to this (a broker that cannot start is not spun on)
STOP_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0
BROKER_LOG_S = 60.0  # a kind of Mosquitto line: said at once, then one line this often at most
BROKER_LOG_KINDS = 64  # kinds of Mosquitto line said apart; past them, one kind for the rest
# Mosquitto 2's note on the configuration this module writes (message_size_limit, kept: it
# drops an oversized message, where max_packet_size would disconnect its sender): not the
# node's news at every start.
OWN_CONFIG_NOTE = "Note: It is recommended to replace `message_size_limit`"
_TIMESTAMP = re.compile(r"^[0-9]+: ")  # Mosquitto's own prefix on each line (Unix seconds)
# The broker's heap, at most (Mosquitto's memory_limit; images/mosquitto/gibsey.conf says the
# same): anyone who may publish can retain 128 KiB messages under topics of their choosing, and
# nothing else bounds what the broker keeps (an outside tester stored 24 MB, which the broker then
# rewrote to disk at every change). A full queue of the node's events (max_queued_messages, ~0.5
# KiB each) is ~5 MiB: this is room for it and its retained topics many times over.
MEMORY_LIMIT_BYTES = 32 * 1024 * 1024
# What the broker queues for one client that is away or behind, at most, in bytes too (its
# messages count only: 10,000 of 100 KiB is 1 GB). An outside tester left a persistent session
# subscribed to gibsey/v1/# and published 330 messages of 100 KB: the queue reached the heap's
# memory_limit, and the broker refused every client, the node too, for good (the store is
# reloaded at every start). 4 MiB is what max_queued_messages holds of the node's own events
# (10,000 of ~0.4 KiB): a lagging client (the node after a broker restart, a dashboard) keeps as
# many as before, and large messages are bounded; the store stays small enough to save after
# each change (images/mosquitto/gibsey.conf).
MAX_QUEUED_BYTES = 4 * 1024 * 1024
# Where the embedded Mosquitto keeps its store (sessions, queued and retained messages): a RAM
# folder, as the image keeps Debian's Mosquitto's (images/README.md). The store is saved whole
# after every change (the image's setting: a broker killed between saves loses what it
# acknowledged), and every message the broker takes is a change: in the data directory that was
# 15,131 B a dial turn (`gibsey bench wear`, 5 turns/s), nine times the node's own writes, on
# the SD card the ledger is careful with. In RAM the store outlives a broker restart (kill -9
# included) and the node's restart, not a reboot; a node publishes its own retained state again
# at every start.
RAM_FOLDER = Path("/dev/shm")
STORE_FILE = "mosquitto.db"
ORPHAN_AFTER_S = 86400.0  # a store folder whose data directory is gone, unsaved this long, goes
OWNER_FILE = "data-dir"  # in each store folder: the data directory it is for (for a person too)


class EmbeddedBrokerError(RuntimeError):
    pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _check_port(host: str, port: int) -> None:
    if not _port_free(host, port):
        raise EmbeddedBrokerError(
            f"cannot start the embedded broker: {host}:{port} is already in use. "
            f"If a broker (e.g. Mosquitto) runs there, use --broker mqtt://{host}:{port}; "
            "otherwise choose another port with `gibsey up --embedded-port PORT` (or "
            "GIBSEY_EMBEDDED_PORT)."
        )


def find_mosquitto() -> str | None:
    """The mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


class AmqttBroker:
    """amqtt, run inside the node's own event loop."""

    name = "amqtt"
    speaks_mqtt5 = False  # amqtt 0.11 refuses an MQTT 5 CONNECT, and logs two warnings for each

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        _check_port(self.host, self.port)
        # amqtt logs every connection at INFO; the node's own log says what matters.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        from amqtt.broker import Broker

        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker: amqtt in the node's process, on %s", self.url)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


def mosquitto_conf(
    host: str,
    port: int,
    folder: Path,
    memory_limit: int = MEMORY_LIMIT_BYTES,
    store: Path | None = None,
) -> str:
    """The child's configuration: images/mosquitto/gibsey.conf where it applies (one listener,
    on this machine, no WebSockets), its log on stderr, its store in `store` (None: `folder`)."""
    lines = [
        "# Written by gibsey up at every start: the embedded broker (node/spine/broker.py).",
        f"listener {port} {host}",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {store or folder}/",
        "autosave_on_changes true",
        "autosave_interval 1",
        "persistent_client_expiration 7d",
        "max_queued_messages 10000",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"message_size_limit {MAX_MESSAGE_BYTES}",
        f"memory_limit {memory_limit}",
        # Its lines go to the node's log (MosquittoChild._relay), not to a file in `folder`: a
        # store it cannot save (a full /dev/shm) wrote ~10 lines a dial turn to the card, never
        # rotated, and the node heard nothing of it.
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if os.geteuid() == 0:
        # As root Mosquitto would become the `mosquitto` user, who cannot write the node's data
        # directory; and a change of user clears the parent-death signal.
        lines.append("user root")
    return "\n".join(lines) + "\n"


def _on_tmpfs(folder: Path) -> bool:
    """Whether `folder` is a tmpfs mount point (RAM), from the kernel's table of this process's
    mounts."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    return any(line.split()[1:3] == [str(folder), "tmpfs"] for line in mounts.splitlines() if line)


def _own_folder(folder: Path) -> bool:
    """Make `folder` (0700) if it is not there; whether it is this user's own directory, which
    nobody else can write (not a link: another user may make names in a shared RAM folder)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    return _is_own(folder)


def _is_own(folder: Path) -> bool:
    """Whether `folder` is a directory of this user's that nobody else can write."""
    info = os.lstat(folder)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def ram_folder(data_dir: Path, ram: Path = RAM_FOLDER) -> Path:
    """The RAM folder of the embedded Mosquitto's store for the node on `data_dir`: named by
    the user and the data directory's path, so two nodes on a machine never share one."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return ram / f"gibsey-mosquitto-{os.getuid()}-{digest}"


def store_folders(ram: Path = RAM_FOLDER) -> Iterator[tuple[Path, Path]]:
    """This user's store folders in `ram`, each with the data directory its owner file names
    (one being made, with no owner file yet, or unreadable, is left out)."""
    for folder in ram.glob(f"gibsey-mosquitto-{os.getuid()}-*"):
        try:
            yield folder, Path((folder / OWNER_FILE).read_text().strip())
        except (OSError, UnicodeDecodeError):
            continue


def _forget_orphans(ram: Path, ours: Path) -> None:
    """Remove this user's other store folders whose data directory is gone (a node deleted, a
    test's temporary directory) and that no broker saved for a day: RAM is the machine's, and
    nothing else would free them. (A running node's broker saves every few seconds, its status
    being retained; one whose data directory only this process cannot see, in a mount namespace
    of its own, is left alone so.)"""
    for folder, data_dir in store_folders(ram):
        try:
            if folder == ours or not _is_own(folder):
                continue
            gone = data_dir.is_absolute() and not data_dir.exists() and _untouched(folder)
        except OSError:
            continue  # removed meanwhile
        if gone:
            shutil.rmtree(folder, ignore_errors=True)
            log.info(
                "removed %s: the store of a data directory that is gone (%s)", folder, data_dir
            )


def _untouched(folder: Path, for_s: float = ORPHAN_AFTER_S) -> bool:
    """Whether nothing in `folder` was written for `for_s` seconds."""
    newest = max((p.lstat().st_mtime for p in (folder, *folder.iterdir())), default=0.0)
    return time.time() - newest > for_s


def broker_store(data_dir: Path, ram: Path = RAM_FOLDER) -> tuple[Path, str]:
    """The folder of the embedded Mosquitto's store for the node on `data_dir`, and, when it
    cannot be in RAM, why (it is then in the data directory, as before). One folder per data
    directory and user, the same at every start, so a restarted node finds its retained
    messages; a store an older node left in the data directory is moved into it."""
    on_disk = data_dir / "mosquitto"
    if not _on_tmpfs(ram):
        return on_disk, f"{ram} is not a RAM filesystem (tmpfs)"
    folder = ram_folder(data_dir, ram)
    try:
        if not _own_folder(folder):
            return on_disk, f"{folder} is not a folder of this user's alone"
        owner = folder / OWNER_FILE
        if not owner.exists():
            owner.write_text(f"{data_dir.resolve()}\n")
        _forget_orphans(ram, folder)
        old = on_disk / STORE_FILE
        if old.exists():
            if (folder / STORE_FILE).exists():
                old.unlink()  # the RAM copy is the one the broker saved since
            else:
                shutil.move(old, folder / STORE_FILE)
                log.info("the embedded broker's store moved from %s into RAM", on_disk)
    except OSError as exc:
        return on_disk, f"{folder}: {exc.strerror or exc}"
    return folder, ""


def _death_signal() -> Callable[[], None]:
    """What the child runs between fork and exec: SIGKILL when the node's thread that forked it
    ends (its process, kill -9 included); if the node is already gone, go now. libc is looked up
    here, in the node, so the child only makes one call (no loader lock after a fork)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


class MosquittoChild:
    """Mosquitto as the node's supervised child process."""

    name = "mosquitto"
    speaks_mqtt5 = True

    def __init__(
        self, binary: str, host: str, port: int, data_dir: Path, in_ram: bool = True
    ) -> None:
        self.binary = binary
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.folder = data_dir / "mosquitto"
        self.store = self.folder
        self.in_ram = in_ram
        self.conf = self.folder / "mosquitto.conf"
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self.last_words: collections.deque[str] = collections.deque(maxlen=3)
        self._said = PacedLog(log, "", BROKER_LOG_S)
        self._kinds: set[str] = set()  # the kinds of line said so far (_meaning)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        _check_port(self.host, self.port)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.in_ram:
            self.store, not_in_ram = broker_store(self.data_dir)
        else:
            self.store, not_in_ram = self.folder, ""  # asked for: [node] embedded_broker_store
        if not_in_ram:
            log.warning(
                "the embedded broker's store is in %s, on the data directory's disk, saved after "
                "every message (~15 KB a dial turn: an SD card wears): %s",
                self.store,
                not_in_ram,
            )
        self.conf.write_text(mosquitto_conf(self.host, self.port, self.folder, store=self.store))
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="mosquitto")
        log.info(
            "embedded MQTT broker: Mosquitto (%s, child process %d, dies with the node; "
            "config in %s, store in %s) on %s",
            self.binary,
            self.proc.pid if self.proc else 0,
            self.folder,
            self.store,
            self.url,
        )

    async def _spawn(self) -> None:
        # Started from the event loop's thread, which lives as long as the node: the death
        # signal follows the thread that forked, not the process. In a session of its own: a
        # terminal's Ctrl-C goes to its whole foreground process group, and the broker, killed
        # by the same keystroke as the node, was gone before the node could say goodbye on it
        # (and was reported dead, to be started again, by a node on its way out). The node
        # stops it itself, last.
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(self.conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_death_signal(),
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        relay = asyncio.create_task(self._relay(self.proc.stderr), name="mosquitto-log")
        self._relays.add(relay)  # until it ends, at the pipe's end: one a run of the broker
        relay.add_done_callback(self._relays.discard)
        await self._wait_listening(self.proc, relay)

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        """Mosquitto's errors and warnings, into the node's log, paced per kind of line (its
        timestamp and numbers aside): a store it cannot save is said once a minute with a
        count, not a line per message. Read to its end, whatever comes: a pipe left unread
        would stall the broker once its buffer filled."""
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").strip()
            text = _TIMESTAMP.sub("", text, count=1)
            if not text:
                continue
            self.last_words.append(text)
            if text.startswith(OWN_CONFIG_NOTE):
                log.debug("the embedded Mosquitto says %r", text)
                continue
            what, kind = self._meaning(text)
            self._said.note(what, text, kind)

    def _meaning(self, text: str) -> tuple[str, str]:
        """What a line of Mosquitto's means for the node, where it is known (said instead of
        the line); else "the embedded Mosquitto says", and the line's kind, its numbers aside
        (one kind of line, one paced entry; the line itself is said once, not twice). The kinds
        are bounded (BROKER_LOG_KINDS; PacedLog keeps one entry a kind): lines naming clients a
        stranger chose would otherwise make a new kind each."""
        if "No space left on device" in text:
            return (
                f"the embedded Mosquitto cannot save its store in {self.store} (that file "
                "system is full): what it keeps for the node is in its memory only, lost if it "
                "restarts, until there is room",
                "",
            )
        kind = re.sub(r"[0-9]+", "N", text)[:120]
        if kind not in self._kinds:
            if len(self._kinds) >= BROKER_LOG_KINDS:
                return "the embedded Mosquitto says (another kind of line)", ""
            self._kinds.add(kind)
        return "the embedded Mosquitto says", kind

    async def _wait_listening(
        self, proc: asyncio.subprocess.Process, relay: asyncio.Task[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while True:
            if proc.returncode is not None:
                # Its last lines: read to the pipe's end by `relay` (at most a second more).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(relay), 1.0)
                said = "; ".join(self.last_words) or "nothing"
                raise EmbeddedBrokerError(
                    f"Mosquitto exited ({proc.returncode}) at start, saying: {said}"
                )
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                return
            if loop.time() > deadline:
                raise EmbeddedBrokerError(
                    f"Mosquitto did not listen on {self.url} within {READY_TIMEOUT_S:g}s"
                )
            await asyncio.sleep(0.02)

    async def _supervise(self) -> None:
        """Start Mosquitto again whenever it dies while the node runs."""
        delay = RESTART_FIRST_S
        while True:
            assert self.proc is not None
            code = await self.proc.wait()
            log.warning(
                "the embedded Mosquitto died (exit %s); starting it again in %.1fs", code, delay
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except (EmbeddedBrokerError, OSError) as exc:
                log.error("the embedded Mosquitto did not start again: %s", exc)
                delay = min(delay * 2, RESTART_MAX_S)
                continue
            self.restarts += 1
            delay = RESTART_FIRST_S
            log.warning("the embedded Mosquitto runs again (child process %d)", self.proc.pid)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for relay in self._relays:  # each ends at its pipe's end; cancelled if it lingers
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        self._relays.clear()
        self._said.flush()


EmbeddedBroker = AmqttBroker | MosquittoChild


def embedded_broker(
    kind: str, host: str, port: int, data_dir: Path, in_ram: bool = True
) -> EmbeddedBroker:
    """The embedded broker `[node] embedded_broker` asks for ("auto": Mosquitto when it is
    installed, else amqtt, saying so); a Mosquitto's store in RAM or in the data directory
    (`[node] embedded_broker_store`)."""
    binary = find_mosquitto() if kind != "amqtt" else None
    if binary is not None:
        return MosquittoChild(binary, host, port, data_dir, in_ram)
    if kind == "mosquitto":
        raise EmbeddedBrokerError(
            "[node] embedded_broker = mosquitto, but mosquitto is not installed "
            "(apt-get install mosquitto; `make run` installs it)"
        )
    if kind == "auto":
        log.warning(
            "mosquitto is not installed: the embedded broker is amqtt, which does not hold a "
            "flood of visitors' turns (apt-get install mosquitto)"
        )
    return AmqttBroker(host, port)
