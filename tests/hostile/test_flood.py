"""A flood of visitors' turns under thousands of names (issue 16, item 5), on real nodes.

What is tried: a `gibsey up` process, on a Mosquitto configured as the image configures it and on
the broker `gibsey up` starts by itself (the embedded default); a script publishes thousands of
`glyph/rotated` in a few seconds with QoS 1, every one under a new actor name and a new source
name (so no throttle keyed by a name ever refuses one: ~6,500 mints were written so before).
What must hold: the node's work is bounded whatever the names (`[node]
visitor_inputs_per_second`), so its ledger holds at most that many mints; every turn the broker
acknowledged is either performed (one `ritual/performed`) or counted as dropped in the node's
status, none unaccounted, and a refused turn gets no reply; `/api/status` answers all through the
flood (how fast is `gibsey bench flood`'s figure, not asserted here). And the embedded default is
Mosquitto when it is installed, a child process that does not outlive a kill -9 of the node and is
started again when it dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gibsey.harness.flood import FloodRun, run_flood
from gibsey.harness.mosquitto import MOSQUITTO, PRODUCTION_DROPIN
from gibsey.harness.nodeproc import children_named, spawn_up, wait_for_file
from gibsey.harness.ports import free_port
from gibsey.harness.turns import node_online
from gibsey.harness.waiting import stop_process, wait_until
from gibsey.node.spine.inputs import BURST_S
from tests.brokers import Mosquitto

RATE_PER_S = 5.0  # the node's bound in these tests: [node] visitor_inputs_per_second
TURNS = 3_000
SECONDS = 3.0

needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="mosquitto is not installed: the default is amqtt"
)


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path
    node_id: str
    mqtt_url: str
    http_url: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def up(
    tmp_path: Path, broker_url: str = "", visitor_url: str = "", embedded: str = "auto"
) -> AsyncIterator[Up]:
    """`gibsey up` with its gateway, on `broker_url` (empty: its `embedded` broker), bounded to
    RATE_PER_S visitors' inputs a second, until it stopped cleanly; visitors reach the broker
    at `visitor_url` (empty: as the node does)."""
    data = tmp_path / "node"
    data.mkdir()
    (data / "gibsey.toml").write_text(
        f'[node]\nvisitor_inputs_per_second = {RATE_PER_S}\ndiscovery_prefix = ""\n'
    )
    port = free_port()
    env = dict(
        os.environ,
        GIBSEY_EMBEDDED_PORT=str(port),
        GIBSEY_EMBEDDED_BROKER=embedded,
        PYTHONUNBUFFERED="1",
    )
    env.pop("GIBSEY_BROKER", None)
    log = tmp_path / "up.log"
    proc = spawn_up(data, broker_url, "127.0.0.1:0", env=env, log=log)
    try:
        await asyncio.to_thread(wait_for_file, proc, data / "gateway.json", 60, "gibsey up")
        node_id = (data / "node_id").read_text().strip()
        http_url = str(json.loads((data / "gateway.json").read_text())["url"])
        url = visitor_url or broker_url or f"mqtt://127.0.0.1:{port}"
        await node_online(url, node_id, connects=1, timeout_s=30)
        yield Up(proc, data, log, node_id, url, http_url)
    finally:
        stop_process(proc, signal.SIGINT, 30)


def _mints(data: Path) -> int:
    """Mint entries in the node's feed, as `gibsey ledger export` prints them."""
    out = _gibsey("ledger", "export", "--data", str(data))
    return sum(1 for line in out.splitlines() if json.loads(line.split("\t")[0])["type"] == "mint")


def _gibsey(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gibsey", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


async def _flood_and_check(node: Up) -> FloodRun:
    run = await run_flood(
        node.mqtt_url,
        node.http_url,
        node.node_id,
        count=TURNS,
        seconds=SECONDS,
        actors=TURNS,
        sources=TURNS,
        settle_s=60.0,
    )
    acked = len(run.flood.acked)
    summary = (
        f"{acked} acknowledged, {run.performed} performed, {run.drops} counted as dropped "
        f"({run.status.get('throttled')} throttled), {run.answers} ritual/performed received "
        f"({run.delivered} for these turns, {run.outbox_dropped} dropped from the outbox), "
        f"in {run.took_s:.1f}s"
    )
    assert acked == TURNS, summary
    # Bounded whatever the names: one burst, then the node's rate for as long as it lasted.
    bound = RATE_PER_S * BURST_S + RATE_PER_S * run.took_s
    mints = await asyncio.to_thread(_mints, node.data)
    assert mints <= bound and run.performed <= bound, f"{mints} mints; {summary}"
    # None unaccounted: performed, or counted as dropped in the node's status.
    assert run.performed + run.drops == acked, summary
    # A refused turn gets no reply: one ritual/performed per performed turn, no more, none lost.
    assert run.answers == run.delivered == run.performed and run.outbox_dropped == 0, summary
    # /api/status answered all through the flood.
    assert run.latencies_s and run.unanswered == 0, summary
    assert node.proc.poll() is None, node.log_text()[-3000:]
    return run


async def test_a_flood_from_many_names_through_the_production_broker(tmp_path: Path) -> None:
    """3,000 turns in 3 s, each under a new actor and source name, through Mosquitto with the
    image's drop-in (sent as a dashboard): at most 5/s (+ one 10 s burst) performed and minted,
    every acknowledged turn performed or counted, no reply to a refused one, /api/status
    answering throughout, and the ledger verifies."""
    broker = Mosquitto(tmp_path / "mosquitto", dropin=PRODUCTION_DROPIN).start()
    try:
        # The flood comes as a visitor's dashboard would: the broker's user that may send
        # visitors' turns (where the drop-in closes it to anonymous clients).
        dashboard = broker.url_as("gibsey-dashboard" if broker.passwords else None)
        async with up(tmp_path, broker.url, dashboard) as node:
            await _flood_and_check(node)
        assert "ok:" in _gibsey("ledger", "verify", "--data", str(node.data))
    finally:
        broker.stop()


@needs_mosquitto
async def test_a_flood_from_many_names_through_the_embedded_default(tmp_path: Path) -> None:
    """The same flood through the broker `gibsey up` starts by itself (no broker configured):
    the same bounds and accounts hold, and the log says the broker is Mosquitto."""
    async with up(tmp_path) as node:
        await _flood_and_check(node)
        assert "embedded MQTT broker: Mosquitto" in node.log_text()


async def test_a_flood_from_many_names_through_the_amqtt_fallback(tmp_path: Path) -> None:
    """The same flood through amqtt, the broker `gibsey up` runs inside its own loop where
    Mosquitto is not installed: the same bounds and accounts hold, and every performed turn's
    ritual/performed reaches a subscriber (amqtt also hands a new subscriber retained messages
    of other topics; the answers were once all uncounted for it)."""
    async with up(tmp_path, embedded="amqtt") as node:
        await _flood_and_check(node)
        assert "embedded MQTT broker: amqtt" in node.log_text()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@needs_mosquitto
async def test_the_embedded_mosquitto_dies_with_the_node_and_comes_back_when_it_dies(
    tmp_path: Path,
) -> None:
    """The embedded default is a Mosquitto child of the node. Killed with -9, it is started
    again and the node is back on it (online from a second connection); the node killed with
    -9, no Mosquitto of it survives (the kernel's parent-death signal)."""
    async with up(tmp_path) as node:
        children = children_named(node.proc.pid, "mosquitto")
        assert len(children) == 1, node.log_text()[-2000:]
        child = children[0]
        os.kill(child, signal.SIGKILL)
        await node_online(node.mqtt_url, node.node_id, connects=2, timeout_s=30)
        (again,) = await asyncio.to_thread(
            wait_until, lambda: children_named(node.proc.pid, "mosquitto"), 10, "a new Mosquitto"
        )
        assert again != child
        node.proc.kill()
        node.proc.wait()
        await asyncio.to_thread(
            wait_until, lambda: not _alive(again), 10, "the node's Mosquitto to die with it"
        )
