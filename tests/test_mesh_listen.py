"""The mesh's port taken by another process: said in one line, never a traceback; `gibsey up`
serves on without its mesh and starts it once the port is free."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.harness.ports import free_port
from gibsey.harness.waiting import until
from gibsey.node import parts
from gibsey.node.config import load_gibsey_config
from gibsey.node.daemon import Node
from tests.brokers import Mosquitto
from tests.conftest import CollectorFactory, started
from tests.events import topic
from tests.mesh_support import REPO, make_nodes


def _held_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def test_mesh_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    """Tried (an outside tester): `gibsey mesh serve` on a port in use printed a traceback
    ending in ZMQError. Must hold: one line naming the endpoint and the cause, exit 1."""
    holder, port = _held_port()
    try:
        (a,) = make_nodes(tmp_path, ["127.0.0.1"], [port], peers=False)
        done = subprocess.run(
            [sys.executable, "-m", "gibsey", "mesh", "serve", "--data", str(a.data)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"gibsey mesh: cannot listen on tcp://127.0.0.1:{port}: Address already in use "
        "(another node or `gibsey mesh serve` on it? set [mesh] listen)"
    )


async def test_a_node_serves_on_without_its_mesh_until_its_port_is_free(
    tmp_path: Path,
    collector_factory: CollectorFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tried (an outside tester): `gibsey up` with `[mesh] listen` on a port in use logged
    "service mesh failed" and a traceback, then ran with no mesh for good. Must hold: one line
    and one `mesh_listen_failed` alert; the node performs turns meanwhile; once the port is
    free the mesh listens there, without a restart."""
    monkeypatch.setattr(parts, "MESH_LISTEN_RETRY_S", 0.2)
    holder, port = _held_port()
    (a,) = make_nodes(tmp_path, ["127.0.0.1"], [port], peers=False)
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        node = Node(a.data, load_gibsey_config(a.data))
        col = await collector_factory(broker.port, topic(node.node_id, "safety/alert"))
        with caplog.at_level(logging.ERROR):
            async with started(node, broker.url):
                alert = (await col.wait_for(lambda c: c.of_kind("safety/alert")))[0]["payload"]
                assert alert["reason"] == "mesh_listen_failed"
                assert f"cannot listen on tcp://127.0.0.1:{port}" in alert["detail"]
                mesh = node.parts.mesh
                assert mesh is not None and not mesh.started.is_set()
                holder.close()
                await until(mesh.started.is_set, 20, "the mesh listening once the port is free")
                assert mesh.endpoint == f"tcp://127.0.0.1:{port}"
    finally:
        holder.close()
        broker.stop()
    assert "Traceback" not in caplog.text
    failed = [r for r in caplog.records if "cannot listen on" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None


def test_a_second_process_on_a_running_data_directory_is_refused(tmp_path: Path) -> None:
    """Tried (an outside tester): `gibsey mesh serve` beside `gibsey up` on one data
    directory ran a second mesh on the same ledger and overwrote the first's status file.
    Must hold: the second is refused in one line naming the first's pid, exit 1."""
    from tests.test_cli_output import gibsey

    (a,) = make_nodes(tmp_path, ["127.0.0.1"], [free_port()], peers=False)
    a.start(timeout=60)
    assert a.proc is not None
    first = a.proc.pid
    try:
        second = gibsey(a.data, "mesh", "serve", "--listen", f"tcp://127.0.0.1:{free_port()}")
    finally:
        a.stop()
    assert second.returncode == 1
    said = second.stderr.decode()
    assert f"a node is already running on {a.data} (pid {first})" in said, said


def test_a_sync_that_fails_says_what_the_endpoint_answered(tmp_path: Path) -> None:
    """Tried (an outside tester): `gibsey mesh sync` to a closed port, a dead address and a
    name that does not resolve said only "no complete sync ... in 5s". Must hold: it says
    whether anything listens there, and when something does, that the handshake is the cause."""
    from tests.mesh_support import public_key_hex
    from tests.test_cli_output import gibsey

    a, b = make_nodes(tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()], peers=False)
    closed = free_port()
    refused = gibsey(a.data, "mesh", "sync", f"{b.key}@tcp://127.0.0.1:{closed}", "--timeout", "1")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (
        f"sync: no complete sync with tcp://127.0.0.1:{closed} in 1.0s: connection refused: "
        "nothing listens there (is the peer's node up, on that port?)"
    )
    b.start(timeout=60)
    try:  # b listens, but we list another key for it: no handshake completes
        wrong = gibsey(
            a.data, "mesh", "sync", f"{public_key_hex(9)}@{b.endpoint}", "--timeout", "1"
        )
    finally:
        b.stop()
    assert wrong.returncode == 1
    assert "its port answers, but no handshake completed" in wrong.stderr.decode()
