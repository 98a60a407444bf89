"""`gibsey up`: run a node in the foreground with a live status line; Ctrl-C stops it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gibsey.core.config import ConfigError, empty_config, resolve_data_dir
from gibsey.core.datalock import AlreadyRunning, DataDirLock
from gibsey.core.identity import IdentityError
from gibsey.core.mqtt import BrokerUrlError
from gibsey.core.storage import (
    EXIT_DISK_REFUSED,
    DatabaseUnreadable,
    refused_advice,
    sqlite_refusal,
    unreadable,
)
from gibsey.node.config import GibseyConfig, load_gibsey_config, parse_gibsey_config
from gibsey.node.daemon import Node
from gibsey.node.gateway.config import DEFAULT_LISTEN
from gibsey.node.spine.broker import EmbeddedBrokerError
from gibsey.node.spine.drops import DropAlerts
from gibsey.node.watchdog.sdnotify import Notifier

# `gibsey up --broker URL` stands for this variable (the [node] broker key it overrides).
BROKER_VARIABLE = "GIBSEY_BROKER"

if TYPE_CHECKING:
    # rich only where stderr is a terminal: in systemd's journal or a pipe `gibsey up` writes
    # plain lines, and the daemon saves rich's ~2 MiB resident (`gibsey bench footprint`).
    from rich.console import Console
    from rich.text import Text

log = logging.getLogger("gibsey.up")
# Under systemd, how long a node that found no room waits before it exits to be restarted: the
# unit's start limit (StartLimitBurst=20 in StartLimitIntervalSec=600) would otherwise be spent
# in seconds, and systemd would stop trying for good while the disk is still full.
DISK_RETRY_S = 40.0
# How long a thread may hold the GIL while the event loop waits for it (CPython's default: 5 ms).
# The ledger's group commit and the mesh run Python on threads of their own; the loop gives the
# GIL up at every syscall (each send, each recv) and, in a flood of turns, waited up to the whole
# interval to get it back: a dial turn's median 0.55-0.60 -> 0.47-0.51 ms (`gibsey bench dial`,
# 3,000 frames, 4 interleaved pairs; its p99 did not move beyond noise).
SWITCH_INTERVAL_S = 0.0005


def _fmt_uptime(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
    )


def _status_pieces(node: Node) -> list[tuple[str, str | None]]:
    """The status line, piece by piece, each with its rich style (None: plain)."""
    spine = node.spine
    if spine is None:
        broker = "starting"
        style = "yellow"
    elif spine.connected:
        broker = spine.url
        style = "green"
    else:
        broker = f"{spine.url} (unreachable, retrying)"
        style = "red"
    pieces: list[tuple[str, str | None]] = [(f"node {node.node_id}", "bold"), ("  broker ", None)]
    pieces.append((broker, style))
    if node.embedded is not None:
        pieces.append((f" (embedded {node.embedded.name})", None))
    stats = node.router.stats
    pieces.append((f"  {node.events_per_s:7.1f} events/s  {stats.accepted} events", None))
    if stats.rejected_total:
        pieces.append((f"  {stats.rejected_total} rejected", "red"))
    pieces.append((f"  up {_fmt_uptime(node.uptime)}", None))
    return pieces


def status_plain(node: Node) -> str:
    return "".join(piece for piece, _ in _status_pieces(node))


def status_line(node: Node) -> Text:
    from rich.text import Text

    text = Text()
    for piece, style in _status_pieces(node):
        text.append(piece, style=style)
    return text


def _say(console: Console | None, line: str, *, soft_wrap: bool = False) -> None:
    """An error of `gibsey up`: red on a terminal (console), else one plain line on stderr."""
    if console is None:
        print(f"gibsey up: {line}", file=sys.stderr, flush=True)
        return
    from rich.markup import escape

    console.print(f"[red]gibsey up:[/red] {escape(line)}", soft_wrap=soft_wrap)


class AcceptErrors:
    """The loop's exception handler, but for asyncio's "socket.accept() out of system resource"
    (no file descriptor left: a flood of connections): counted, and said at most once a minute
    with the count (node/spine/drops.py's pacing), not once a second with a traceback (an
    outsider's thousand open connections grew the log by GBs)."""

    EVERY_S = 60.0
    _REASON = "accept"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failed = 0
        self._said = DropAlerts(self.EVERY_S, clock())

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system"):
            loop.default_exception_handler(context)
            return
        self.failed += 1
        for due in self._said.due({self._REASON: self.failed}, self.clock()):
            log.warning(
                "gateway: no file descriptor left to accept a connection (%d times since the "
                "last line: %s); the node goes on, and accepts again as connections close",
                due.dropped,
                context.get("exception"),
            )


# Seconds after the start when the heap is set aside once more: the parts' services (the
# gateway's app, the agents' links) have made theirs by then.
HEAP_SETTLE_S = 60.0


def set_heap_aside() -> int:
    """Collect once, then move every object alive into the collector's permanent generation
    (gc.freeze), and return how many it holds: the modules, schemas and parts a start builds
    (~50,000-75,000 objects) are never garbage, and a full collection walked all of them, 36-45
    ms of the event loop on this project's laptop (several times that on a Pi), during which a
    dial turn waited. What is made from here on is collected as before; a frozen object is still
    freed when its last reference goes, only a cycle among them would stay."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _terminal_fds() -> list[int]:
    """stdout and stderr, those of them that are a terminal."""
    return [fd for fd in (1, 2) if os.isatty(fd)]


def _hung_up(stop: asyncio.Event, terminal_fds: list[int]) -> None:
    """SIGHUP: the terminal closed, or the technician's SSH session to the Pi dropped while
    `make run` ran in it. By default it ended the node at once, mid-turn: no last word to the
    dashboards (offline), no last group committed. The node stops as on Ctrl-C, and what it
    says from here on goes nowhere if it was saying it to that terminal: a write to a terminal
    that is gone fails (EIO), and the status line's last frame failing ended the node mid-stop."""
    if terminal_fds:
        nowhere = os.open(os.devnull, os.O_WRONLY)
        for fd in terminal_fds:
            os.dup2(nowhere, fd)
        os.close(nowhere)
    stop.set()


async def _serve(node: Node, broker_given: bool, console: Console | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrors())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _hung_up, stop, _terminal_fds())
    try:
        # --broker is the configured broker now; said for the commands beside the node
        await node.start(say_broker=broker_given)
    except EmbeddedBrokerError as exc:
        _say(console, str(exc))
        return 1
    log.info("node %s started; data in %s; Ctrl-C stops it", node.node_id, node.data_dir)
    log.info("the start's heap, %d objects, is set aside from the collector", set_heap_aside())
    loop.call_later(HEAP_SETTLE_S, set_heap_aside)
    if console is not None:
        from rich.live import Live

        with Live(status_line(node), console=console, refresh_per_second=2, transient=True) as live:
            while not stop.is_set():
                live.update(status_line(node))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                except TimeoutError:
                    pass
    else:
        # Under systemd or a pipe: a status line every 30 s in the log instead of a live line.
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=30)
            except TimeoutError:
                log.info("%s", status_plain(node))
    log.info("stopping node %s", node.node_id)
    await node.stop()
    log.info("stopped cleanly")
    return 0


def _disk_refused(console: Console | None, data_dir: Path, exc: OSError | sqlite3.Error) -> int:
    """A start the data directory's disk refused (full, read-only, failing): one line saying so
    and the exit status systemd restarts (EXIT_DISK_REFUSED); any other error is raised on."""
    damaged = unreadable(exc, f"a database in {data_dir}")
    if damaged is not None:  # found past its opening: a person restores it, as above
        _say(console, str(damaged), soft_wrap=True)
        return 2
    filename = exc.filename if isinstance(exc, OSError) else None
    what = f"writing {filename}" if filename else f"a database in {data_dir}"
    refused = sqlite_refusal(exc, what, data_dir)
    if refused is None:
        raise exc
    line = refused_advice(data_dir, refused)
    _say(console, line, soft_wrap=True)  # one line, unwrapped
    notifier = Notifier()
    if notifier.enabled:  # under systemd: `systemctl status` says why, meanwhile
        notifier.status(f"{line} (the next start in {DISK_RETRY_S:g} s)")
        deadline = time.monotonic() + DISK_RETRY_S
        while (left_s := deadline - time.monotonic()) > 0:
            notifier.send("WATCHDOG=1")  # a pause, not a hang: WatchdogSec must not end it
            time.sleep(min(left_s, (notifier.watchdog_s or DISK_RETRY_S) / 2))
        notifier.close()
    return EXIT_DISK_REFUSED


def _logging(verbose: bool) -> Console | None:
    """The log on stderr: rich's (and a live status line) on a terminal; else plain lines in
    the same layout (time, level, message), returning no console."""
    level = logging.DEBUG if verbose else logging.INFO
    if not sys.stderr.isatty():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-8s %(message)s", "%X"))
        logging.basicConfig(level=level, handlers=[handler])
        return None
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    rich = RichHandler(console=console, show_path=False, rich_tracebacks=True)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[rich])
    return console


def _run(args: argparse.Namespace) -> int:
    console = _logging(args.verbose)
    data_dir = resolve_data_dir(args.data)
    try:
        # Held until this process ends, however it ends (core/datalock.py).
        lock = DataDirLock(data_dir).acquire()
    except AlreadyRunning as exc:
        _say(console, str(exc), soft_wrap=True)
        return 1
    except OSError as exc:
        return _disk_refused(console, data_dir, exc)
    try:
        return _run_locked(args, console, data_dir)
    finally:
        lock.release()


def _load_config(data_dir: Path, broker: str | None) -> GibseyConfig:
    """gibsey.toml with its overrides, `--broker URL` among them as GIBSEY_BROKER is, whose
    place it takes: the password file applies to it, checked against it (an outside tester's
    `--broker` replaced the URL after the file had been checked against gibsey.toml's, or
    refused for want of one there, and the node logged in without the password)."""
    if broker is None:
        return load_gibsey_config(data_dir)
    environ = {**os.environ, BROKER_VARIABLE: broker}
    return load_gibsey_config(data_dir, environ=environ, said_as={BROKER_VARIABLE: "--broker"})


def _run_locked(args: argparse.Namespace, console: Console | None, data_dir: Path) -> int:
    named = os.environ.get("GIBSEY_CONFIG")
    if named and not Path(named).exists():
        # Allowed (the image names /etc/gibsey/gibsey.toml whether or not the card brought one),
        # but said: a mistyped name runs the node on the defaults (an outside tester's).
        log.warning(
            "GIBSEY_CONFIG names %s, which does not exist: every setting is its default", named
        )
    emptied = empty_config(data_dir)
    if emptied:
        log.warning("%s", emptied)
    try:
        config = _load_config(data_dir, args.broker)
        # --http, else [gateway] listen (or GIBSEY_HTTP), else every interface on 8080.
        config.gateway.listen_on(args.http or config.gateway.listen or DEFAULT_LISTEN)
        node = Node(data_dir, config, node_id=args.node_id)
    except (ConfigError, IdentityError, DatabaseUnreadable) as exc:
        # Mended by a person only (a config to correct, a database to restore): said, and the
        # same status as a bad configuration.
        _say(console, str(exc), soft_wrap=True)
        return 2
    except (OSError, sqlite3.Error) as exc:
        return _disk_refused(console, data_dir, exc)
    if args.embedded_port is not None:
        config.node.embedded_port = args.embedded_port
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return asyncio.run(_serve(node, args.broker is not None, console))
    except BrokerUrlError as exc:
        _say(console, str(exc))
        return 2
    except (OSError, sqlite3.Error) as exc:
        return _disk_refused(console, data_dir, exc)


def _port(text: str) -> int:
    """A TCP port 1..65535, as `[node] embedded_port` takes it (argparse: a usage error)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1..65535)")
    return int(text)


def _node_id(text: str) -> str:
    """A node id, as core/identity.py keeps it (argparse: a usage error, nothing written)."""
    from gibsey.core.identity import check_node_id

    try:
        return check_node_id(text)
    except IdentityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "up",
        parents=[common],
        help="run a node in the foreground with a live status line",
        description=(
            "Run a Gibsey node in the foreground. With no broker configured it starts an "
            "embedded MQTT broker: Mosquitto as its child process when it is installed, else "
            "amqtt in the same process ([node] embedded_broker); with --broker it connects to that "
            "broker (Mosquitto in production) and keeps retrying if it is not there yet. "
            "The first start creates the node id and its ed25519 key in the data directory."
        ),
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        default=None,
        help="mqtt://[user@]host:port of the broker, as GIBSEY_BROKER (its password file applies) "
        "(default: config 'broker', else embedded)",
    )
    p.add_argument(
        "--node-id",
        type=_node_id,
        default=None,
        help="node id to create on first start (default: from the key)",
    )
    p.add_argument(
        "--embedded-port",
        type=_port,
        default=None,
        help="port of the embedded broker (default 1883)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="HTTP gateway and dashboard address (default: $GIBSEY_HTTP or [gateway] listen, "
        "else 0.0.0.0:8080; "
        "port 0 picks a free port, written to DATA/gateway.json; 'off' disables it)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_run)


def register_image(sub: Any, common: argparse.ArgumentParser) -> None:
    """`gibsey image` (node/image/cli.py), given the node's check of the whole gibsey.toml: first
    boot and check-config refuse a file `gibsey up` would refuse, not only the sections they
    apply (an outside tester's `[gatway]` typo passed check-config and stopped the node)."""
    from gibsey.node.image import cli as image_cli

    image_cli.register(sub, common, whole_file_check=check_whole_file)


def check_whole_file(tables: Mapping[str, Any], source: str, read_files: bool) -> GibseyConfig:
    """gibsey.toml as written (no environment: first boot's is not the node's), every section."""
    return parse_gibsey_config(tables, source, environ={}, read_files=read_files)


def register_doctor(sub: Any, common: argparse.ArgumentParser) -> None:
    """`gibsey doctor` (node/doctor.py): checks of the whole node, imported only when asked."""
    from gibsey.node import doctor

    doctor.register(sub, common)
