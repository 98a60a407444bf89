"""`gibsey dial`: a virtual glyph dial in the terminal, for driving a node without hardware.

Arrow keys turn it (left/right: one detent counter-clockwise/clockwise, stepping the rotation
Read -> Write -> Remember -> Dream), up/down pick the base symbol (what a long press does on the
board), space presses the button, Enter is a long press, q quits.

It goes through the same bridge path as a real dial: it runs the firmware's own QDPI mapping
(`gibsey.dialcore.qdpi`) and frame encoder (`gibsey.dialcore.frame`), boot hello, sequence numbers
and checksums included, and publishes the frames exactly as a Pico W does, one per MQTT message on
`gibsey/v1/<node>/dial/<dial_id>/frame`. The node's dial bridge decodes them, checks the sequence
and emits `glyph/rotated`; the dial shows the `ritual/performed` the node answers with.

Why MQTT rather than a pseudo-terminal into the serial reader: it works against any running node
(`gibsey up` with its embedded broker, or Mosquitto on a Pi across the room) with no device setup
or configuration, and the frames from the decoder on take the bridge's one path for both
transports (the serial side differs only in splitting bytes into lines, which the pty tests cover).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import stat
import sys
import termios
import time
import tty
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from gibsey.core.announce import broker_url
from gibsey.core.config import ConfigError, resolve_data_dir
from gibsey.core.console import make_console
from gibsey.core.mqtt import BrokerUrlError, ClientSettings, MqttError, Session, parse_broker_url
from gibsey.core.topics import topic_for
from gibsey.dialcore import frame as df
from gibsey.dialcore.app import FIRMWARE
from gibsey.dialcore.config import DEFAULTS as FIRMWARE_DEFAULTS
from gibsey.dialcore.qdpi import CHARACTERS, ROTATIONS, QdpiDial, symbol_name
from gibsey.node.dial.bridge import DIAL_ID, frame_topic, read_ready

HEARTBEAT_S = float(FIRMWARE_DEFAULTS["heartbeat_s"])  # as a board sends its hellos
ARROWS = "↑→↓←"  # the glyph's orientation per rotation: Read, Write, Remember, Dream
KEYS = {
    b"\x1b[C": "cw",
    b"\x1bOC": "cw",
    b"\x1b[D": "ccw",
    b"\x1bOD": "ccw",
    b"\x1b[A": "next",
    b"\x1bOA": "next",
    b"\x1b[B": "prev",
    b"\x1bOB": "prev",
    b" ": "press",
    b"\r": "long",
    b"\n": "long",
    b"q": "quit",
    b"\x03": "quit",
    b"\x04": "quit",
}


def parse_keys(buf: bytes) -> tuple[list[str], bytes]:
    """Key presses in `buf`, and the bytes of an escape sequence still incomplete."""
    out: list[str] = []
    i = 0
    while i < len(buf):
        for seq, name in KEYS.items():
            if buf.startswith(seq, i):
                out.append(name)
                i += len(seq)
                break
        else:
            if buf[i : i + 1] == b"\x1b" and len(buf) - i < 3:
                return out, buf[i:]
            i += 1
    return out, b""


@dataclass
class VirtualDial:
    node_id: str
    dial_id: str
    dial: QdpiDial
    seq: int = 0
    sent: int = 0
    connected: bool = False
    last_ritual: dict[str, Any] | None = None
    last_sent_at: float = 0.0
    last_rtt_ms: float | None = None
    log: list[str] = field(default_factory=list)
    # A hello every this many seconds without a key, as the firmware's `heartbeat_s` (0: none):
    # the node's Home Assistant sensors of a dial go unavailable when its hellos stop.
    heartbeat_s: float = HEARTBEAT_S

    def next_frame(self, action: str) -> list[str]:
        d = self.dial
        lines: list[str] = []
        if action in ("hello", "beat"):  # the boot hello, or the heartbeat's
            boot = action == "hello"
            lines.append(df.hello(self.seq, self.dial_id, FIRMWARE, d.symbol, d.rotation, boot))
        elif action in ("cw", "ccw"):
            d.turn(1 if action == "cw" else -1)
            lines.append(df.rotate(self.seq, d.symbol, d.rotation, d.position))
        elif action in ("next", "prev"):
            d.cycle(1 if action == "next" else -1)
            lines.append(df.rotate(self.seq, d.symbol, d.rotation, d.position))
        elif action in ("press", "long"):
            lines.append(df.press(self.seq, d.symbol, d.rotation, action == "long"))
            if action == "long":
                self.seq = (self.seq + 1) % df.SEQ_MOD
                d.cycle(1)
                lines.append(df.rotate(self.seq, d.symbol, d.rotation, d.position))
        self.seq = (self.seq + 1) % df.SEQ_MOD
        self.sent += len(lines)
        return [line.rstrip("\n") for line in lines]

    def render(self) -> Panel:
        d = self.dial
        colour = CHARACTERS[d.symbol][1] if d.symbol < len(CHARACTERS) else "#666666"
        name = symbol_name(d.symbol)
        glyph = Text()
        arrow = ARROWS[d.rotation]
        for row in range(3):
            glyph.append("   ")
            glyph.append(f" {arrow} " * 3 if row == 1 else "       ", style=f"black on {colour}")
            glyph.append("  ")
            if row == 0:
                glyph.append(f"{name}", style=f"bold {colour}")
                glyph.append(f"  symbol {d.symbol}")
            elif row == 1:
                glyph.append(f"rotation {d.rotation} · {ROTATIONS[d.rotation].upper()}  ")
                for r in range(4):
                    glyph.append("● " if r == d.rotation else "○ ", style=colour)
            else:
                glyph.append(f"state {d.state} (0x{d.state:02x})   position {d.position:+d}")
            glyph.append("\n")
        status = Text()
        status.append("broker ")
        status.append(
            "connected" if self.connected else "connecting…",
            style="green" if self.connected else "yellow",
        )
        status.append(f"   frames sent {self.sent}")
        answer = Text("node: ")
        if self.last_ritual is None:
            answer.append("(no ritual yet)", style="dim")
        else:
            ritual = self.last_ritual
            answer.append(f"ritual/performed state {ritual.get('state')}", style="bold")
            program = ritual.get("program") or "—"
            answer.append(f"  program {program}  effects {ritual.get('effects', 0)}")
            if self.last_rtt_ms is not None:
                answer.append(f"  {self.last_rtt_ms:.1f} ms")
        help_ = Text("←/→ turn   ↑/↓ symbol   space press   enter long press   q quit", style="dim")
        return Panel(
            Group(glyph, status, answer, help_),
            title=f"gibsey dial · node {self.node_id} · dial {self.dial_id}",
            border_style=colour,
        )


def _broker_url(args: argparse.Namespace) -> str:
    """--broker, else the broker a command beside the node talks to (core/announce.py)."""
    return str(args.broker or broker_url(resolve_data_dir(getattr(args, "data", None))))


class KeyReader:
    """Reads the terminal when it is readable and queues the key presses it finds."""

    def __init__(self, fd: int, actions: asyncio.Queue[str]) -> None:
        self.fd = fd
        self.actions = actions
        self._pending = b""  # an escape sequence cut between two reads

    def __call__(self) -> None:
        data = read_ready(self.fd, 64)
        if not data:
            self.actions.put_nowait("quit")
            return
        keys, self._pending = parse_keys(self._pending + data)
        for key in keys:
            self.actions.put_nowait(key)


async def _run_dial(vd: VirtualDial, url: str, console: Console) -> int:
    loop = asyncio.get_running_loop()
    actions: asyncio.Queue[str] = asyncio.Queue()
    fd = sys.stdin.fileno()
    loop.add_reader(fd, KeyReader(fd, actions))
    live = Live(vd.render(), console=console, auto_refresh=False, transient=False)
    try:
        with live:
            while True:
                try:
                    await _dial_session(vd, url, live, actions)
                    return 0  # the session ends cleanly only when the user quits
                except MqttError:
                    vd.connected = False
                    live.update(vd.render(), refresh=True)
                    # A key meanwhile is dropped (no broker to send it to), but for quit.
                    if await _next_action(actions, 1.0) == "quit":
                        return 0
    finally:
        loop.remove_reader(fd)


async def _dial_session(vd: VirtualDial, url: str, live: Live, actions: asyncio.Queue[str]) -> None:
    """One broker connection: the boot hello, then the frames of each key until the user quits
    (returns) or the broker goes (MqttError)."""
    topic = frame_topic(vd.node_id, vd.dial_id)
    settings = ClientSettings(url, f"gibsey-dial-{vd.dial_id}-{os.getpid()}")
    async with Session(settings) as session:
        await session.subscribe(topic_for(vd.node_id, "ritual/performed"), qos=1)
        vd.connected = True
        for line in vd.next_frame("hello"):
            await session.publish(topic, line, qos=1)
        live.update(vd.render(), refresh=True)
        reader = asyncio.create_task(_show_answers(vd, session, live))
        try:
            while (action := await _next_action(actions, vd.heartbeat_s)) != "quit":
                vd.last_sent_at = time.perf_counter()
                for line in vd.next_frame(action):
                    await session.publish(topic, line, qos=1)
                live.update(vd.render(), refresh=True)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _next_action(actions: asyncio.Queue[str], heartbeat_s: float) -> str:
    """The next key's action, or "beat" once `heartbeat_s` pass without one (0: wait on)."""
    if not heartbeat_s:
        return await actions.get()
    try:
        async with asyncio.timeout(heartbeat_s):  # not wait_for: it can drop a cancel
            return await actions.get()
    except TimeoutError:
        return "beat"


async def _show_answers(vd: VirtualDial, session: Session, live: Live) -> None:
    """The node's `ritual/performed` answers, shown as they arrive."""
    async for msg in session.messages():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = json.loads(msg.payload)
            vd.last_ritual = doc["payload"]
            if vd.last_sent_at:
                vd.last_rtt_ms = (time.perf_counter() - vd.last_sent_at) * 1e3
            live.update(vd.render(), refresh=True)


def _dial_id(text: str) -> str:
    """A dial id the bridge takes (a topic level: bridge.py DIAL_ID; the firmware's rule)."""
    if not DIAL_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is no dial id: 1 to 32 of a-z 0-9 _ -")
    return text


def _run(args: argparse.Namespace) -> int:
    console = Console()
    errors = make_console(stderr=True)  # what went wrong: stderr, the screen is stdout's
    data_dir = resolve_data_dir(getattr(args, "data", None))
    node_id = args.node
    if not node_id:
        try:
            node_id = (data_dir / "node_id").read_text().strip()
        except OSError:
            errors.print(
                f"[red]gibsey dial:[/red] no node in {data_dir} (start `gibsey up` first, "
                "or give --node ID and --broker URL)",
                soft_wrap=True,  # one line, however narrow the terminal or the pipe
            )
            return 2
    try:
        url = _broker_url(args)
        parse_broker_url(url)
        dial = QdpiDial(args.symbol, list(range(16)) if args.symbol < 16 else [args.symbol])
    except (ConfigError, BrokerUrlError, ValueError) as exc:
        # [node] is no markup; one line, however narrow the terminal or the pipe
        errors.print(f"[red]gibsey dial:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    vd = VirtualDial(node_id=node_id, dial_id=args.dial_id, dial=dial, heartbeat_s=args.heartbeat)
    fd = sys.stdin.fileno()
    if not _keys_can_arrive(fd):
        errors.print(
            "[red]gibsey dial:[/red] it reads its keys from a terminal or a pipe, and stdin is "
            "neither (/dev/null or a file: under nohup, cron or CI); run it in a terminal, or "
            "pipe keys to it",
            soft_wrap=True,
        )
        return 2
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setcbreak(fd)
            new = termios.tcgetattr(fd)
            new[3] &= ~termios.ISIG  # Ctrl-C arrives as a key: quit cleanly, terminal restored
            termios.tcsetattr(fd, termios.TCSANOW, new)
        return asyncio.run(_run_dial(vd, url, console))
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _keys_can_arrive(fd: int) -> bool:
    """Whether the event loop can wait on `fd` for keys: a terminal, a pipe or a socket. A
    regular file or /dev/null is always "ready" and epoll refuses it (EPERM)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False  # stdin closed
    return os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "dial",
        parents=[common],
        help="a virtual glyph dial in the terminal (arrows turn, space presses)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", metavar="URL", default=None, help="mqtt://host:port of the node")
    p.add_argument("--node", metavar="ID", default=None, help="node id (default: the data dir's)")
    p.add_argument(
        "--dial-id",
        type=_dial_id,
        default="virtual",
        help="this dial's id, 1 to 32 of a-z 0-9 _ - (default: virtual)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT_S,
        metavar="S",
        help=f"a hello every S seconds without a key, as a board's heartbeat_s (default "
        f"{HEARTBEAT_S:g}; 0: none)",
    )
    p.add_argument("--symbol", type=int, default=0, help="base symbol to start on, 0..63")
    p.set_defaults(func=_run)


def register_firmware(sub: Any, common: argparse.ArgumentParser) -> None:
    """`gibsey firmware` (node/dial/firmware.py): flash the dial's Pico."""
    from gibsey.node.dial import firmware

    firmware.register(sub, common)
