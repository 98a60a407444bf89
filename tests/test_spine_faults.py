"""Broker faults: missing at start, restarted mid-run, node killed; nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from gibsey.core.envelope import GiftTxn
from gibsey.core.mqtt import MAX_MESSAGE_BYTES, ClientSettings, Session
from gibsey.harness.nodeproc import spawn_up, wait_for_file
from gibsey.harness.turns import node_online
from gibsey.harness.waiting import port_open, until
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.spine.client_id import node_client_id
from gibsey.node.spine.spine import OUTBOX_MAX_BYTES, MessageTooLarge, OutboxFull, Spine
from tests.brokers import Mosquitto, free_port
from tests.conftest import Collector, CollectorFactory, started
from tests.events import raw_event, topic


async def test_node_starts_without_broker_and_connects_when_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gibsey.spine")
    broker = Mosquitto(tmp_path / "mosq")  # configured, not started yet
    node = Node(tmp_path / "data", GibseyConfig())
    await node.start(broker.url)
    assert node.spine is not None
    try:
        # Wait until the node has tried, failed and said so.
        async def said_unreachable() -> None:
            while not any("not reachable" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(said_unreachable(), 10)
        assert not node.spine.connected
        message = next(r.getMessage() for r in caplog.records if "not reachable" in r.getMessage())
        assert broker.url in message and "retrying in" in message
        # An event emitted while the broker is away waits in the outbox ...
        early = node.emit("gift/txn", GiftTxn(giver="a", receiver="b", amount=1))
        broker.start()
        await node.spine.wait_connected(timeout_s=15)
        # ... and is delivered once the broker is there.
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe(topic(node.node_id, "node/status"), qos=1)
            async for msg in client.messages:  # retained status proves the node announced itself
                assert json.loads(bytes(msg.payload))["state"] == "online"
                break
        await node.spine.flush(timeout_s=10)
        assert node.spine.stats.published >= 1
        assert early.id
    finally:
        await node.stop()
        broker.stop()


async def _persistent_subscriber(
    port: int, sub_topic: str, got: set[str], stop: asyncio.Event, ready: asyncio.Event
) -> None:
    """A dashboard-like subscriber with a persistent session that reconnects after a restart."""
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="dash-1", clean_session=False
            ) as client:
                await client.subscribe(sub_topic, qos=1)
                ready.set()
                async for msg in client.messages:
                    got.add(json.loads(bytes(msg.payload))["id"])
        except aiomqtt.MqttError:
            await asyncio.sleep(0.1)


async def test_broker_restart_loses_no_acknowledged_event(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosq", persistence=True).start()
    node = Node(tmp_path / "data", GibseyConfig())
    await node.start(broker.url)
    assert node.spine is not None
    await node.spine.wait_connected(timeout_s=10)
    got: set[str] = set()
    stop = asyncio.Event()
    ready = asyncio.Event()
    sub = asyncio.create_task(
        _persistent_subscriber(broker.port, topic(node.node_id, "gift/txn"), got, stop, ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)

        async def emit_batch(n: int, start: int) -> list[tuple[str, asyncio.Future[None]]]:
            out = []
            for i in range(start, start + n):
                sent, acked = node.send("gift/txn", GiftTxn(giver="a", receiver="b", amount=i + 1))
                out.append((sent.id, acked))
            return out

        before = await emit_batch(50, 0)
        await asyncio.wait_for(asyncio.gather(*(f for _, f in before)), 10)

        await until(lambda: {i for i, _ in before} <= got, 10, "every event before the outage")

        broker.stop()  # SIGTERM: Mosquitto saves the dashboard's session
        during = await emit_batch(50, 50)  # emitted while the broker is down
        broker.start()
        await node.spine.wait_connected(timeout_s=15)
        after = await emit_batch(50, 100)
        acked = before + during + after
        await asyncio.wait_for(asyncio.gather(*(f for _, f in acked)), 20)
        await until(lambda: {i for i, _ in acked} <= got, 20, "every acknowledged event")
        assert {i for i, _ in acked} <= got
        assert node.spine.stats.connects >= 2
    finally:
        stop.set()
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)
        await node.stop()
        broker.stop()


def _start_up(data: Path, broker_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GIBSEY_DATA=str(data))
    return subprocess.Popen(
        [sys.executable, "-m", "gibsey", "up", "--broker", broker_url, "--http", "off"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _status_of(port: int, node_id: str, want: str) -> dict[str, object]:
    while True:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(topic(node_id, "node/status"), qos=1)
            async for msg in client.messages:
                doc: dict[str, object] = json.loads(bytes(msg.payload))
                if doc["state"] == want:
                    return doc
                break
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
async def test_gibsey_up_process_says_offline_when_it_goes(
    mosquitto: Mosquitto, tmp_path: Path, how: str
) -> None:
    data = tmp_path / "data"
    proc = _start_up(data, mosquitto.url)
    try:

        async def node_id() -> str:
            while not (data / "node_id").exists():
                await asyncio.sleep(0.02)
            return (data / "node_id").read_text().strip()

        nid = await asyncio.wait_for(node_id(), 20)
        assert (data / "node.key").stat().st_mode & 0o777 == 0o600
        await asyncio.wait_for(_status_of(mosquitto.port, nid, "online"), 20)
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)  # no goodbye: the broker's last will speaks
        else:
            proc.send_signal(signal.SIGINT)
        rc = await asyncio.to_thread(proc.wait, 20)
        doc = await asyncio.wait_for(_status_of(mosquitto.port, nid, "offline"), 30)
        assert doc["node"] == nid
        if how == "ctrl-c":
            assert rc == 0
            out = proc.stdout.read().decode() if proc.stdout else ""
            assert "stopped cleanly" in out
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


async def test_a_new_run_never_performs_its_previous_runs_turn_again(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """The node's session is persistent (kept across reconnects and broker restarts: the hostile
    suite's tests/hostile/test_broker_restart.py), but each run of the node starts it clean.
    Tried: a `gibsey up` performs a visitor's turn and is killed with SIGKILL (no goodbye: its
    session stays on the broker); the turn's bytes then reach the broker again, as the broker's
    resend of a turn the dead run never acknowledged would. What must hold: the next run does
    not perform it a second time (its dedup by event id, in memory, is new)."""
    broker = Mosquitto(tmp_path / "mosq", persistence=True).start()
    data = tmp_path / "data"
    proc = _start_up(data, broker.url)
    try:
        await asyncio.to_thread(wait_for_file, proc, data / "node_id", 30, "gibsey up")
        nid = (data / "node_id").read_text().strip()
        await node_online(broker.url, nid, connects=1, timeout_s=30)
        performed = await collector_factory(broker.port, topic(nid, "ritual/performed"))
        turn = raw_event(nid, "glyph/rotated", {"symbol": 3, "rotation": 0})
        turn_id = json.loads(turn)["id"]

        def causes(c: Collector) -> list[str]:
            return [e["payload"]["cause"] for e in c.of_kind("ritual/performed")]

        await performed.publish(topic(nid, "glyph/rotated"), turn)
        await performed.wait_for(lambda c: turn_id in causes(c))
        proc.kill()
        await asyncio.to_thread(proc.wait)
        await performed.publish(topic(nid, "glyph/rotated"), turn)  # held for the dead run
        again = Node(data, GibseyConfig())
        async with started(again, broker.url):
            # A turn after it, from outside: once it is performed, so would the first be.
            marker = raw_event(nid, "glyph/rotated", {"symbol": 4, "rotation": 0})
            await performed.publish(topic(nid, "glyph/rotated"), marker)
            marker_id = json.loads(marker)["id"]
            await performed.wait_for(lambda c: marker_id in causes(c))
        assert causes(performed) == [turn_id, marker_id]
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        broker.stop()


async def test_a_clean_stop_ends_the_nodes_session(tmp_path: Path) -> None:
    """A node stopped cleanly leaves no session on the broker: nothing is queued (and saved to
    the broker's database, message after message) for a node that is not running."""
    broker = Mosquitto(tmp_path / "mosq", persistence=True).start()
    try:
        node = Node(tmp_path / "data", GibseyConfig())
        async with started(node, broker.url) as spine:
            await asyncio.to_thread(broker.restart)  # SIGTERM: Mosquitto saves the session ...
            await spine.wait_connected(timeout_s=10)
            assert spine.session_present  # ... and the node resumed it
        own_id = node_client_id(node.data_dir, node.node_id)  # the id the node connected with
        settings = ClientSettings(broker.url, own_id, session_expiry_s=60)
        async with Session(settings) as session:
            assert not session.session_present
    finally:
        broker.stop()


async def _up_on_its_embedded_broker(
    tmp_path: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """`gibsey up` with its embedded Mosquitto (on a free port), in a process group of its own
    as a terminal gives it, once online: (the process, the broker's port)."""
    data = tmp_path / "node"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIBSEY_")}
    env |= {"GIBSEY_EMBEDDED_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    proc = spawn_up(data, "", "off", env=env, log=log, own_session=True)
    try:
        await asyncio.to_thread(wait_for_file, proc, data / "node_id", 60, "gibsey up")
        node_id = (data / "node_id").read_text().strip()
        await node_online(f"mqtt://127.0.0.1:{port}", node_id, connects=1, timeout_s=30)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc, port


async def test_a_terminals_ctrl_c_stops_the_node_before_its_embedded_broker(tmp_path: Path) -> None:
    """`make run` in a terminal, then Ctrl-C: the terminal sends SIGINT to its whole foreground
    process group. The node stops cleanly on its own broker, which it stops last: the keystroke
    does not kill the embedded Mosquitto first (a node on its way out then said the broker had
    died and would be started again)."""
    log = tmp_path / "up.log"
    proc, _port = await _up_on_its_embedded_broker(tmp_path, log)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert "embedded MQTT broker: Mosquitto" in text  # (the child, not the amqtt fallback)
    assert code == 0, text[-2000:]
    assert "stopped cleanly" in text
    assert "embedded Mosquitto died" not in text, text[-2000:]


def test_a_hangup_stops_the_node_cleanly(tmp_path: Path) -> None:
    """`make run` over SSH, and the session drops (or the terminal window is closed): the node
    gets SIGHUP, and its terminal is gone. It died at once, mid-turn, saying nothing; once it
    stopped on SIGHUP, its status line's last frame, written to the terminal that was gone
    (EIO), ended it mid-stop. Must hold: it stops as on Ctrl-C, its run marked clean."""
    data, port = tmp_path / "node", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIBSEY_")}
    env |= {"GIBSEY_EMBEDDED_PORT": str(port)}
    master, terminal = pty.openpty()
    cmd = [sys.executable, "-m", "gibsey", "up", "--data", str(data), "--http", "off"]
    # The pty is its controlling terminal, as a login's is: closing the master hangs it up.
    proc = subprocess.Popen(
        cmd, stdin=terminal, stdout=terminal, stderr=terminal, env=env, preexec_fn=_own_terminal
    )
    os.close(terminal)
    shown = threading.Thread(target=_read_until_gone, args=(master,), daemon=True)
    shown.start()  # read as a terminal shows it: a full pty would stall the node
    try:
        wait_for_file(proc, data / "node_id", 60, "gibsey up")
        node_id = (data / "node_id").read_text().strip()
        asyncio.run(node_online(f"mqtt://127.0.0.1:{port}", node_id, connects=1, timeout_s=30))
        os.close(master)  # the terminal goes away
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert json.loads((data / "run.json").read_text())["clean"] is True


def _own_terminal() -> None:
    """In the child: a session of its own, with stdin's pty as its controlling terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_until_gone(master: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(master, 65536):
            pass


async def test_the_embedded_broker_dies_with_a_killed_node(tmp_path: Path) -> None:
    """kill -9 of the node (an OOM kill, a watchdog's): its embedded Mosquitto, in a session
    of its own, is not left behind holding the port for the next start."""
    proc, port = await _up_on_its_embedded_broker(tmp_path, tmp_path / "up.log")
    try:
        proc.kill()
        proc.wait()
        await until(lambda: not port_open(port), 10, "the embedded broker gone with its node")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.asynccontextmanager
async def node_on_a_broker(tmp_path: Path) -> AsyncIterator[tuple[Mosquitto, Node, Spine]]:
    """A node on a real Mosquitto of its own, connected: the broker, the node, its spine."""
    broker = Mosquitto(tmp_path / "mosq").start()
    node = Node(tmp_path / "data", GibseyConfig())
    await node.start(broker.url)
    spine = node.spine
    assert spine is not None
    try:
        await spine.wait_connected(timeout_s=10)
        yield broker, node, spine
    finally:
        await node.stop()
        broker.stop()


async def test_the_status_goes_out_before_a_backlog_and_only_its_newest(tmp_path: Path) -> None:
    """Tried (an outside tester): a broker restarted under a flood. The node's status waited in
    the outbox behind thousands of events, and the retained status stayed the will's "offline"
    for 99 s while the node performed turns. Must hold: with 3,000 events queued while the
    broker is away, the status published after them is acknowledged while most of the backlog
    still waits; an older status not yet sent is superseded (resolved, never sent); the
    backlog is all acknowledged after it."""
    async with node_on_a_broker(tmp_path) as (broker, node, spine):
        broker.stop()
        await until(lambda: not spine.connected, 10, "the broker gone")
        backlog = [
            node.send("gift/txn", GiftTxn(giver="a", receiver="b", amount=i + 1))[1]
            for i in range(3000)
        ]
        # A topic of its own: the node's status, which it publishes the same way as it
        # connects, would supersede one on its topic.
        older = spine.publish_latest("gibsey/test/latest", b'{"state": "older"}')
        newest = spine.publish_latest("gibsey/test/latest", b'{"state": "newest"}')
        assert older.done() and not newest.done()
        waiting_when_acked: list[int] = []
        newest.add_done_callback(lambda _: waiting_when_acked.append(spine.outbox_depth))
        broker.start()
        await asyncio.wait_for(newest, 15)
        assert waiting_when_acked[0] > 2000, waiting_when_acked
        await asyncio.wait_for(asyncio.gather(*backlog), 30)
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("gibsey/test/latest", qos=1)
            async for msg in client.messages:  # what the broker retained
                assert json.loads(bytes(msg.payload)) == {"state": "newest"}
                break


async def test_a_message_over_the_brokers_limit_is_refused_and_the_connection_kept(
    tmp_path: Path,
) -> None:
    """Tried (an outside sweep): the Agency Tensor's document grew past Mosquitto's
    message_size_limit; the broker closed the node's connection at each publish ("out of
    memory"), the resumed session sent it again, and the node reconnected 1,112 times, its
    outbox dropping thousands of events. Must hold: a payload over MAX_MESSAGE_BYTES fails at
    once (MessageTooLarge, counted), is never sent, and the connection stays: the message after
    it is acknowledged on the same connection, and the broker retains that one."""
    async with node_on_a_broker(tmp_path) as (broker, _node, spine):
        connects = spine.stats.connects
        big = spine.publish("gibsey/test/big", b"x" * (MAX_MESSAGE_BYTES + 1), retain=True)
        assert big.done() and isinstance(big.exception(), MessageTooLarge)
        late = spine.publish_latest("gibsey/test/big", b"y" * (MAX_MESSAGE_BYTES + 1))
        assert late.done() and isinstance(late.exception(), MessageTooLarge)
        await asyncio.wait_for(spine.publish("gibsey/test/big", b"small", retain=True), 10)
        assert spine.stats.connects == connects and spine.stats.too_large == 2
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("gibsey/test/big", qos=1)
            async for msg in client.messages:  # what the broker retained
                assert bytes(msg.payload) == b"small"
                break


async def test_the_outbox_holds_a_bounded_number_of_bytes_while_the_broker_is_away(
    tmp_path: Path,
) -> None:
    """The outbox was bounded by count alone (10,000 messages): of 100 KiB each, a broker away
    made the node hold 1 GB. Must hold: with the broker away, 300 messages of 100 KiB leave at
    most OUTBOX_MAX_BYTES waiting, the oldest dropped (OutboxFull, counted) and the newest kept;
    once the broker is back, every message kept is acknowledged."""
    async with node_on_a_broker(tmp_path) as (broker, _node, spine):
        broker.stop()
        await until(lambda: not spine.connected, 10, "the broker gone")
        dropped_before = spine.stats.outbox_dropped
        sent = [
            spine.publish("gibsey/test/bulk", bytes([i % 256]) * 100 * 1024) for i in range(300)
        ]
        kept = OUTBOX_MAX_BYTES // (100 * 1024)
        assert spine.outbox_depth == kept
        assert all(isinstance(f.exception(), OutboxFull) for f in sent[: 300 - kept])
        # (and before them whatever the node itself had queued while the broker was away)
        assert spine.stats.outbox_dropped - dropped_before >= 300 - kept
        broker.start()
        await asyncio.wait_for(asyncio.gather(*sent[300 - kept :]), 60)
        assert spine.outbox_depth == 0
