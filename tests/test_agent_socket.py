"""The agent worker behind a socket, the way gibsey-agent-worker.socket runs it, without systemd.

`SocketUnit` is the narrowest stand-in for systemd's `Accept=yes`: it binds a unix socket and,
for each connection, execs the unit's ExecStart (`python -m gibsey.node.agents.transport`) with
the connection as the worker's stdin and stdout. The daemon side is the real node with
`[agent] worker = "socket:..."`, the real worker and the real small model (Gemma 3 270M).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.core.config import ConfigError
from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.service import AgentService
from gibsey.node.agents.supervisor import Supervisor
from gibsey.node.agents.transport import UNKNOWN_EXIT, SocketWorker
from gibsey.node.config import parse_gibsey_config
from tests.agent_support import agent_node, agents, ask
from tests.conftest import CollectorFactory


class SocketUnit:
    """bind + listen + (accept, exec the worker on the connection) per connection."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self.workers: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._server.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, name="socket-unit", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with open(self.log, "ab") as log:
            while not self._stop.is_set():
                try:
                    conn, _ = self._server.accept()
                except TimeoutError:
                    continue
                with conn:
                    self.workers.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "gibsey.node.agents.transport"],
                            stdin=conn.fileno(),
                            stdout=conn.fileno(),
                            stderr=log,
                        )
                    )

    def worker(self, pid: int | None) -> subprocess.Popen[bytes]:
        found = [w for w in self.workers if w.pid == pid]
        assert found, f"pid {pid} is not a worker this socket started ({self.pids})"
        return found[0]

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()
        for w in self.workers:
            if w.poll() is None:
                w.kill()
            w.wait(10)


@pytest.fixture
def unit() -> Iterator[SocketUnit]:
    # Short: a unix socket path has at most 107 bytes, pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="gibsey-sock-"))
    unit = SocketUnit(folder / "agent-worker.sock", folder / "workers.log")
    try:
        yield unit
    finally:
        unit.close()
        shutil.rmtree(folder, ignore_errors=True)


def _socket_cfg(unit: SocketUnit) -> str:
    return f"socket:{unit.path}"


# -- the transport on its own (no model) ----------------------------------------------------------
async def test_the_worker_pid_comes_from_the_kernel_not_from_so_peercred(
    unit: SocketUnit, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.gguf"
    w = await SocketWorker.connect(str(unit.path), ["--model", str(missing)], {}, timeout_s=30)
    try:
        # SCM_CREDENTIALS: the process systemd (here: this stand-in) started for the connection.
        assert w.pid == unit.workers[0].pid
        # SO_PEERCRED names whoever called listen(): systemd, PID 1, in production; this test
        # here. That is why the transport does not use it to find the worker to kill.
        raw = w.stdin.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        assert struct.unpack("3i", raw)[0] == os.getpid()
        # After the handshake it is worker.py's protocol: the load failure, then the end.
        line = await asyncio.wait_for(w.stdout.readline(), 30)
        assert b'"ev":"load_failed"' in line and b"no model file" in line
        assert await asyncio.wait_for(w.wait(), 30) == UNKNOWN_EXIT
        assert unit.workers[0].wait(10) == 3  # what systemd would have in its journal
    finally:
        if w.returncode is None:
            w.kill()
            await w.wait()


async def test_without_pidfds_the_end_of_the_worker_is_polled(
    unit: SocketUnit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfds(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    missing = tmp_path / "missing.gguf"
    w = await SocketWorker.connect(str(unit.path), ["--model", str(missing)], {}, timeout_s=30)
    assert w.pid == unit.workers[0].pid
    assert b"load_failed" in await asyncio.wait_for(w.stdout.readline(), 30)
    # Gone once its parent (systemd; here the stand-in) reaped it.
    assert await asyncio.to_thread(unit.workers[0].wait, 10) == 3
    assert await asyncio.wait_for(w.wait(), 10) == UNKNOWN_EXIT


async def test_no_socket_is_a_failed_load_not_a_crash(tmp_path: Path) -> None:
    cfg = AgentConfig(worker=f"socket:{tmp_path}/nothing.sock")
    sup = Supervisor(cfg, tmp_path / "model.gguf", tmp_path / "worker.log")
    try:
        await sup.start()
        assert sup.pid is None
        assert "cannot connect to the agent worker socket" in sup.last_failure
        assert "gibsey-agent-worker.socket" in sup.last_failure
    finally:
        await sup.close()


def test_worker_setting_is_checked_and_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GIBSEY_AGENT_WORKER", raising=False)
    assert parse_gibsey_config({}).agent.worker == "spawn"
    for bad in ("socket", "socket:relative.sock", "fork", "socket:/" + "x" * 120):
        with pytest.raises(ConfigError, match=r"\[agent\] worker"):
            parse_gibsey_config({"agent": {"worker": bad}})
    monkeypatch.setenv("GIBSEY_AGENT_WORKER", "socket:/run/gibsey/agent-worker.sock")
    cfg = parse_gibsey_config({"agent": {"worker": "spawn"}}).agent
    assert cfg.worker == "socket:/run/gibsey/agent-worker.sock"


# -- the node with the real model behind the socket -----------------------------------------------
async def _worker_up(service: AgentService) -> int:
    while service.supervisor is None or service.supervisor.pid is None:
        await asyncio.sleep(0.05)
    return service.supervisor.pid


async def _replaced(service: AgentService, old_pid: int) -> int:
    while True:
        sup = service.supervisor
        if sup is not None and sup.pid not in (None, old_pid):
            assert sup.pid is not None
            return sup.pid
        await asyncio.sleep(0.05)


async def test_question_is_answered_through_the_socket_and_a_swap_is_a_second_connection(
    tmp_path: Path, collector_factory: CollectorFactory, unit: SocketUnit
) -> None:
    async with agent_node(tmp_path, worker=_socket_cfg(unit)) as (node, broker):
        final, toks, _ = await ask(
            collector_factory, node, broker.port, "london-fox", "What is this room for?"
        )
        assert final["text"].strip() and toks
        service = agents(node)
        sup = service.supervisor
        assert sup is not None
        first = unit.worker(sup.pid)
        assert len(unit.workers) == 1
        # Hot swap: a second worker loads beside the first over a second connection; the first
        # is told to exit and closes cleanly.
        assert await sup.reload(sup.model) is None
        assert len(unit.workers) == 2
        assert unit.worker(sup.pid) is unit.workers[1]
        assert await asyncio.to_thread(first.wait, 10) == 0
        final, _, _ = await ask(
            collector_factory, node, broker.port, "london-fox", "And after the swap?"
        )
        assert final["text"].strip()


async def test_killed_worker_is_reconnected(
    tmp_path: Path, collector_factory: CollectorFactory, unit: SocketUnit
) -> None:
    async with agent_node(tmp_path, preload=True, worker=_socket_cfg(unit)) as (node, broker):
        service = agents(node)
        old_pid = await asyncio.wait_for(_worker_up(service), 60)
        alerts = await collector_factory(broker.port, f"gibsey/v1/{node.node_id}/safety/alert")
        os.kill(old_pid, signal.SIGKILL)  # a native crash: EOF on the connection
        await alerts.wait_for(
            lambda c: any(
                a["payload"]["reason"] == "agent_worker_died" for a in c.of_kind("safety/alert")
            ),
            timeout_s=20,
        )
        new_pid = await asyncio.wait_for(_replaced(service, old_pid), 60)
        assert unit.worker(new_pid) is unit.workers[-1]
        assert len(unit.workers) == 2
        final, toks, _ = await ask(
            collector_factory, node, broker.port, "old-natalie", "Do you remember the dial?"
        )
        assert final["text"].strip() and toks
        sup = service.supervisor
        assert sup is not None and sup.restarts >= 1 and sup.pid == new_pid


async def test_wedged_worker_is_killed_by_the_daemon_and_replaced(
    tmp_path: Path, collector_factory: CollectorFactory, unit: SocketUnit
) -> None:
    async with agent_node(tmp_path, preload=True, worker=_socket_cfg(unit)) as (node, broker):
        service = agents(node)
        wedged_pid = await asyncio.wait_for(_worker_up(service), 60)
        wedged = unit.worker(wedged_pid)
        os.kill(wedged_pid, signal.SIGSTOP)  # alive, connected, answering nothing
        try:
            new_pid = await asyncio.wait_for(_replaced(service, wedged_pid), 30)
            # Nobody but the daemon sent it SIGKILL (through its pidfd), and it is gone.
            assert await asyncio.to_thread(wedged.wait, 10) == -signal.SIGKILL
        finally:
            if wedged.poll() is None:
                wedged.kill()
        assert unit.worker(new_pid) is unit.workers[-1]
        final, _, _ = await ask(
            collector_factory, node, broker.port, "princhetta", "Are you awake?"
        )
        assert final["text"].strip()
