"""`gibsey dial` in a pseudo-terminal, driven by key presses, against a node on a real Mosquitto:
the keys become frames, the node's dial bridge turns them into events, the node answers."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gibsey.dialcore import frame as df
from gibsey.harness.waiting import until
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.dial.bridge import frame_topic, read_ready
from gibsey.node.dial.cli import VirtualDial, parse_keys
from gibsey.node.dial.config import DialConfig
from tests.brokers import Mosquitto
from tests.conftest import CollectorFactory, started
from tests.events import topic


class Terminal:
    """A child process on a pty: what it drew so far, and keys to type."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS="100", LINES="24")
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env
        )
        os.close(slave)
        self.screen = b""
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        self.screen += read_ready(self.master, 65536)
        self._changed.set()

    async def wait_for(self, text: bytes, timeout_s: float = 20.0) -> None:
        async def _wait() -> None:
            while text not in self.screen:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(_wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"{text!r} not on screen: {self.screen[-2000:]!r}") from None

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
async def node(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Node]:
    config = GibseyConfig(dial=DialConfig(serial="off"))
    node = Node(tmp_path / "data", config)
    async with started(node, mosquitto.url):
        yield node


async def test_keys_turn_the_node_through_the_bridge(
    node: Node, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    nid = node.node_id
    col = await collector_factory(
        mosquitto.port,
        topic(nid, "glyph/rotated"),
        topic(nid, "dial/pressed"),
        topic(nid, "ritual/performed"),
    )
    term = Terminal(
        [
            sys.executable,
            "-m",
            "gibsey",
            "dial",
            "--data",
            str(node.data_dir),
            "--broker",
            mosquitto.url,
            "--symbol",
            "2",
            *("--heartbeat", "0"),  # one hello, the boot's: the count below is exact
        ]
    )
    try:
        await term.wait_for(b"connected")
        await term.wait_for(b"glyph-marrow")
        term.type(b"\x1b[C\x1b[C")  # two detents clockwise: Write, Remember
        await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 2)
        term.type(b"\x1b[D \x1b[A")  # back to Write, press, next symbol
        await col.wait_for(lambda c: len(c.of_kind("glyph/rotated")) == 4)
        await col.wait_for(lambda c: c.of_kind("dial/pressed"))
        await col.wait_for(lambda c: len(c.of_kind("ritual/performed")) == 4)
        rotated = [e["payload"] for e in col.of_kind("glyph/rotated")]
        assert [(p["symbol"], p["rotation"]) for p in rotated] == [(2, 1), (2, 2), (2, 1), (3, 0)]
        assert {p["source"] for p in rotated} == {"virtual"}
        pressed = col.of_kind("dial/pressed")[0]["payload"]
        assert (pressed["symbol"], pressed["rotation"], pressed["press"]) == (2, 1, "short")
        await term.wait_for(b"phillip-bafflemint")  # the new glyph is drawn
        await term.wait_for(b"ritual/performed state 12")  # and the node's answer
        bridge = node.parts.dial
        assert bridge is not None
        assert bridge.stats.lost == 0 and bridge.stats.hellos == 1
        assert bridge.dials["virtual"].transport == "mqtt"
        term.type(b"q")
        assert await asyncio.to_thread(term.proc.wait, 10) == 0
    finally:
        term.close()


def test_key_parsing() -> None:
    assert parse_keys(b"\x1b[C\x1b[D \r q") == (
        ["cw", "ccw", "press", "long", "press", "quit"],
        b"",
    )
    assert parse_keys(b"\x1b[A\x1b[") == (["next"], b"\x1b[")
    assert parse_keys(b"\x1bOB") == (["prev"], b"")


def test_virtual_dial_frames_are_valid_firmware_frames() -> None:
    from gibsey.dialcore import frame as df
    from gibsey.dialcore.qdpi import QdpiDial

    vd = VirtualDial("n1", "virtual", QdpiDial(0, [0, 1]))
    lines = [*vd.next_frame("hello"), *vd.next_frame("cw"), *vd.next_frame("long")]
    frames = [df.decode(line) for line in lines]
    assert [(f.seq, f.kind) for f in frames] == [(0, "H"), (1, "R"), (2, "P"), (3, "R")]
    assert (frames[-1].symbol, frames[-1].rotation) == (1, 0)


def test_a_dial_without_a_terminal_or_a_pipe_says_so_in_one_line(tmp_path: Path) -> None:
    """Under nohup, cron or CI stdin is /dev/null, which the event loop cannot wait on (epoll
    refuses it): one line and exit 2, not a PermissionError's traceback."""
    (tmp_path / "node_id").write_text("n1\n")
    done = subprocess.run(
        [sys.executable, "-m", "gibsey", "--data", str(tmp_path), "dial"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""  # an error: on stderr
    assert done.stderr.splitlines() == [
        "gibsey dial: it reads its keys from a terminal or a pipe, and stdin is neither "
        "(/dev/null or a file: under nohup, cron or CI); run it in a terminal, or pipe keys to it"
    ]


def test_a_dial_id_the_bridge_would_refuse_is_a_usage_error(tmp_path: Path) -> None:
    """Tried (an outside tester): `gibsey dial --dial-id "BAD ID"` ran, and the node counted
    every frame malformed ("bad dial id in topic"). Must hold: a usage error (exit 2)."""
    (tmp_path / "node_id").write_text("n1\n")
    done = subprocess.run(
        [sys.executable, "-m", "gibsey", "--data", str(tmp_path), "dial", "--dial-id", "BAD ID"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "'BAD ID' is no dial id: 1 to 32 of a-z 0-9 _ -" in done.stderr


async def test_an_idle_virtual_dial_says_hello_as_a_board_does(
    node: Node, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """Tried: `gibsey dial` left alone, its heartbeat short. Must hold: after its boot hello it
    sends heartbeat hellos (boot 0) with no key pressed, as a board's firmware does every
    heartbeat_s, so the node keeps hearing it (its Home Assistant sensors expire without)."""
    nid = node.node_id
    col = await collector_factory(mosquitto.port, frame_topic(nid, "idle"))
    args = ["dial", "--data", str(node.data_dir), "--broker", mosquitto.url, "--dial-id", "idle"]
    term = Terminal([sys.executable, "-m", "gibsey", *args, "--heartbeat", "0.2"])
    try:
        await term.wait_for(b"connected")
        await col.wait_for(lambda c: len(c.messages) >= 3)
        frames = [df.decode(payload.decode()) for _, payload in col.messages[:3]]
        assert [(f.kind, f.boot) for f in frames] == [(df.HELLO, True)] + [(df.HELLO, False)] * 2
        assert [f.seq for f in frames] == [0, 1, 2]  # no gap: the node counts none lost
        bridge = node.parts.dial
        assert bridge is not None
        await until(lambda: bridge.stats.hellos >= 3, 10, "the node hearing the heartbeats")
        assert bridge.stats.lost == 0
        term.type(b"q")
        assert await asyncio.to_thread(term.proc.wait, 10) == 0
    finally:
        term.close()
