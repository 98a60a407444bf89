"""sd_notify, the watchdog pings, and death-rebirth rituals, against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gibsey.core.config import NodeConfig
from gibsey.harness.waiting import until
from gibsey.ledger.ledger import Ledger
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory


class NotifySocket:
    """What systemd listens on: a datagram socket; every message is kept with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, key: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if any(ln.startswith(key) for ln in m.split("\n"))]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


async def test_ready_status_watchdog_and_stopping(
    mosquitto: Mosquitto, tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    config = GibseyConfig(node=NodeConfig(status_interval=1.0))
    node = Node(tmp_path / "data", config)
    await node.start(mosquitto.url)
    try:
        await until(lambda: notify.lines("READY=1"), 10, "READY=1")
        ready = notify.lines("READY=1")[0][1]
        assert f"STATUS=node {node.node_id}" in ready
        await until(lambda: len(notify.lines("WATCHDOG=1")) >= 5, 10, "5 watchdog pings")
        await until(
            lambda: any("connected" in m for _, m in notify.lines("STATUS=")),
            15,
            "a connected status",
        )
        # Wedge the event loop for 1 s: the pings must stop while it is stuck.
        before = len(notify.lines("WATCHDOG=1"))
        wedged_at = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 - deliberately blocking the loop: this is the wedge
        unwedged_at = time.monotonic()
        await until(lambda: len(notify.lines("WATCHDOG=1")) >= before + 3, 10, "3 more pings")
        pings = [t for t, _ in notify.lines("WATCHDOG=1")]
        during = [t for t in pings if wedged_at + 0.05 < t < unwedged_at - 0.05]
        assert during == []
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) >= 0.9  # the wedge
        assert sorted(gaps)[len(gaps) // 2] < 0.3  # otherwise every ~0.1 s
    finally:
        await node.stop()
    assert notify.lines("STOPPING=1")


async def test_no_notify_socket_means_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    node = Node(tmp_path / "data", GibseyConfig())
    assert node.notifier.enabled is False
    assert node.notifier.ready("x") is False


def _up(data: Path, broker: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`gibsey up` on `data`, its output in `log` (None: discarded)."""
    env = dict(os.environ, GIBSEY_DATA=str(data), GIBSEY_DISCOVERY_PREFIX="")
    env.pop("NOTIFY_SOCKET", None)
    with contextlib.ExitStack() as stack:
        out: Any = subprocess.DEVNULL if log is None else stack.enter_context(open(log, "wb"))
        return subprocess.Popen(
            [sys.executable, "-m", "gibsey", "up", "--broker", broker, "--http", "off"],
            env=env,
            stdout=out,
            stderr=out,
        )


def _mint_each(data: Path, broker: str, actors: list[str]) -> None:
    for actor in actors:
        subprocess.run(
            [sys.executable, "-m", "gibsey", "ledger", "mint", "--data", str(data), actor, "1"],
            env=dict(os.environ, GIBSEY_BROKER=broker),
            capture_output=True,
            check=True,
            timeout=60,
        )


async def _running(data: Path, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        doc = json.loads((data / "run.json").read_text()) if (data / "run.json").exists() else {}
        return doc.get("pid") == proc.pid

    await until(up, 30, "the node up again")


def _record_exit(data: Path, **env: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "gibsey", "watchdog", "record-exit", "--data", str(data)],
        env=dict(os.environ, **env),
        check=True,
        timeout=60,
    )


async def test_a_killed_node_records_its_rebirth_and_a_crash_loop_opens_a_hearing(
    mosquitto: Mosquitto, tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gibsey.toml").write_text("[watchdog]\nrestarts = 2\nwindow_minutes = 10\n")
    col: Collector = await collector_factory(mosquitto.port, "gibsey/v1/+/ritual/rebirth")
    proc = _up(data, mosquitto.url)
    try:
        await _running(data, proc)
        # A clean stop is not a death.
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        for round_ in range(1, 5):
            proc = _up(data, mosquitto.url)
            await _running(data, proc)
            if round_ > 1:  # the previous round's kill is recorded by this start
                await col.wait_for(
                    lambda c, n=round_ - 1: len(c.of_kind("ritual/rebirth")) >= n, 30
                )
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 30)
            # What systemd's ExecStopPost would record for a SIGKILL.
            await asyncio.to_thread(
                _record_exit, data, EXIT_CODE="killed", EXIT_STATUS="KILL", SERVICE_RESULT="signal"
            )
        proc = _up(data, mosquitto.url)
        await _running(data, proc)
        rebirths = await col.wait_for(
            lambda c: c.of_kind("ritual/rebirth")[3:] and c.of_kind("ritual/rebirth"), 30
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 30)
    payloads = [r["payload"] for r in rebirths]
    assert len(payloads) == 4  # the clean stop was not counted
    assert [p["restarts"] for p in payloads] == [1, 2, 3, 4]
    assert all(p["cause"] == "signal KILL" for p in payloads)
    assert all(p["entry"] for p in payloads)
    hearings = [p["hearing"] for p in payloads if p["hearing"]]
    assert len(hearings) == 1 and payloads[2]["hearing"]  # opened once, at the 3rd death
    ledger = Ledger.open(data)
    try:
        entries = ledger.store.entries_after(ledger.author, 0, 100)
        rebirth_entries = [e for e in entries if e.type == "rebirth"]
        proposals = [e for e in entries if e.type == "proposal"]
    finally:
        ledger.close()
    assert [e.hash_hex for e in rebirth_entries] == [p["entry"] for p in payloads]
    assert [e.hash_hex for e in proposals] == hearings
    assert "Schrödinger Hearing" in proposals[0].body["title"]


async def test_a_killed_node_whose_own_feed_is_behind_still_starts(
    mosquitto: Mosquitto, tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """Tried (an outside tester's kill -9 sweep): a node killed while its ledger had lost
    entries its own-feed mark counts (wiped, an old copy, a damaged entry log) died at every
    start with a traceback: the rebirth entry was refused (the store must not fork the feed)
    and `gibsey up` exited 1, so systemd restarted it into the same crash, and the mesh, which
    the refusal tells the technician to wait for, never ran to bring the feed back. Must hold:
    the node runs, says why the death is not on the ledger in one line, and signs nothing."""
    data = tmp_path / "data"
    await asyncio.to_thread(_mint_each, data, mosquitto.url, ["ada", "bob", "cy"])  # mark: 3
    proc = _up(data, mosquitto.url)
    try:
        await _running(data, proc)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
        for f in data.iterdir():  # the ledger lost its entries; node.key and the mark stay
            if f.name.startswith("ledger.sqlite3"):
                f.unlink()
        col: Collector = await collector_factory(mosquitto.port, "gibsey/v1/+/ritual/rebirth")
        log = tmp_path / "up.log"
        proc = await asyncio.to_thread(_up, data, mosquitto.url, log)
        await _running(data, proc)
        rebirth = await col.wait_for(lambda c: c.of_kind("ritual/rebirth"), 30)
        assert proc.poll() is None, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0
    assert rebirth[0]["payload"]["entry"] is None
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "the death is not recorded on the ledger" in text
    ledger = Ledger.open(data)
    try:
        assert ledger.store.heads() == {}  # nothing signed over the lost seqs 1..3
    finally:
        ledger.close()
