"""A full disk, beyond the ledger's own write path (issue 16, item 1): the story view, the mesh,
the commands, the metrics and the files a node writes at its start.

What is tried, on a real tmpfs filled to its last byte: the story graph folding entries it cannot
store; a peer gossiping entries the mesh cannot import; `gibsey up` and `gibsey ledger gift` /
`mint` started on it; rituals whose mints cannot be stored, as /metrics and `gibsey doctor` see
them; the start count and gateway.json written at a start. What must hold: nothing is stored in
part, the node says so once (one safety/alert disk_full, never one per sync or per message) and
catches up by itself once space returns; a command says what is wrong in one line (the data
directory, the refused write with its errno, what to do), no traceback, and exits with
EXIT_DISK_REFUSED (75), which systemd restarts. And when a node stops, it closes agents.db.

Mounting needs root: without it those tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from gibsey.core.storage import EXIT_DISK_REFUSED, DiskHealth, StorageError
from gibsey.harness.waiting import stop_process
from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import BUSY_TIMEOUT_MS, Store
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import MeshNode
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.gateway.config import PORT_FILE, GatewayConfig
from gibsey.node.gateway.openapi import mutating_operations
from gibsey.node.gateway.scrape import count_start
from gibsey.node.story.corpus import SAMPLE, read_corpus
from tests.brokers import Mosquitto
from tests.conftest import CollectorFactory, started
from tests.events import topic
from tests.gateway_support import GatewayNode, gateway_node
from tests.hostile.test_disk import (
    AUTH,
    REPO,
    TOKEN,
    disk_alerts,
    fill,
    ledger_verify,
    node_on,
    own_entries,
    temp_files,
    tmpfs,
    turn,
)
from tests.mesh_support import quick_mesh_config

__all__ = ["gateway_node"]  # a fixture, used by name

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a real tmpfs: needs root")
MINT = {"actor": "visitor:1", "amount": 1, "ritual": "0:0"}
UNIT = REPO / "images" / "systemd" / "gibsey-node.service"


async def until(pred: Callable[[], Any], what: str, timeout_s: float = 30.0) -> None:
    """Poll `pred` (the node runs meanwhile) until it holds; fail saying `what` after a deadline
    that only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def gibsey(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "gibsey", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )


def one_clear_line(done: subprocess.CompletedProcess[str], command: str, data: Path) -> str:
    """The command's one line about the full disk (and no traceback): what it says."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"gibsey {command}:")]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert f"the data directory {data} has no room" in line, line
    assert "(ENOSPC)" in line, line
    return line


# ---- the story view -----------------------------------------------------------------------


@needs_root
async def test_story_sync_on_a_full_disk_says_so_once_and_catches_up(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """A node on an 8 MB tmpfs; 20 entries reach its ledger from another process (as `gibsey
    ledger` or the mesh would add them) and the tmpfs is filled before the story view can fold
    them. Must hold: the view's syncs are refused again and again but said once - exactly one
    safety/alert disk_full and no story_sync_failed (before: "cannot rollback" over the real
    error, and an alert every second), no service stopped by it (before: the agents' tensor
    writer died for good) - and, once the filler is deleted, the view folds every entry by
    itself and the node says disk_recovered."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        data = disk / "data"
        async with node_on(data, mosquitto) as (node, _http):
            nid = node.node_id
            col = await collector_factory(mosquitto.port, topic(nid, "safety/alert"))
            story, ledger = node.parts.story, node.parts.ledger
            assert story is not None and ledger is not None
            node.heartbeat_s = 3600.0  # the story's writes are the only ones tried meanwhile
            refused = node.disk.refused_total
            with ledger.store.lock:  # the story folds under this lock: its sync waits here
                other = Store.open(data)
                other.append_many(SigningKey(bytes(range(1, 33))), [("mint", MINT)] * 20)
                other.close()
                filler = fill(disk)
            await until(lambda: node.disk.refused_total >= refused + 3, "3 refused story syncs")
            assert story.graph.folded() < ledger.store.count()
            filler.unlink()
            await until(
                lambda: story.graph.folded() == ledger.store.count(), "the view to catch up"
            )
            await col.wait_for(lambda c: disk_alerts(c, "disk_recovered"))
        assert len(disk_alerts(col)) == 1, disk_alerts(col)
        assert disk_alerts(col, "story_sync_failed") == []
        assert disk_alerts(col, "service_failed") == []  # e.g. the agents' tensor writer
        assert temp_files(disk) == []


# ---- the mesh -----------------------------------------------------------------------------


def mesh_node(
    store: Store, key: SigningKey, peers: list[PeerSpec], allow: set[bytes], listen: bool
) -> MeshNode:
    cfg = quick_mesh_config(peers, allow)
    return MeshNode(store, key, cfg, listen=listen)


@needs_root
async def test_the_mesh_on_a_full_disk_refuses_imports_quietly_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Node A holds 30 entries; node B, whose store is on a tmpfs filled to its last byte,
    gossips with A every 50 ms. Must hold: B keeps running and refuses each import (counted in
    its stats), logs one warning for them, never a traceback (before: one logged traceback per
    message); nothing is stored in part; once the filler is deleted B catches up by itself and
    its store verifies."""
    caplog.set_level(logging.WARNING, logger="gibsey.mesh")
    a_key, b_key = SigningKey(bytes(range(32))), SigningKey(bytes(range(2, 34)))
    a_pub, b_pub = bytes(a_key.verify_key), bytes(b_key.verify_key)
    a_store = Store.open(tmp_path / "a")
    a_store.append_many(a_key, [("mint", MINT)] * 30)
    a = mesh_node(a_store, a_key, [], {b_pub}, listen=True)
    await a.start()
    with tmpfs(tmp_path / "disk", "4m") as disk:
        b_store = Store.open(disk / "b")
        b = mesh_node(b_store, b_key, [PeerSpec(a_pub, a.endpoint)], set(), listen=False)
        filler = fill(disk)
        await b.start()
        try:
            await until(lambda: b.stats.disk_refused >= 3, "3 refused imports")
            assert b_store.count() == 0
            filler.unlink()
            # A's 30 mints and its `members` entry (A's mesh records its gallery at start)
            await until(lambda: b_store.count() == 31, "B to catch up")
        finally:
            await b.stop()
            await a.stop()
        assert b_store.verify().ok
        b_store.close()
    a_store.close()
    mesh_logs = [r for r in caplog.records if r.name == "gibsey.mesh"]
    assert [r for r in mesh_logs if r.exc_info] == []
    assert len([r for r in mesh_logs if "disk refuses" in r.getMessage()]) == 1


# ---- commands -----------------------------------------------------------------------------


def test_the_node_unit_restarts_a_node_the_disk_stopped() -> None:
    """The systemd unit of the SD image. Must hold: it restarts the node after a non-zero exit
    and does not count EXIT_DISK_REFUSED as a success or a reason to stop restarting."""
    lines = [line.strip() for line in UNIT.read_text().splitlines()]
    assert "Restart=on-failure" in lines
    for key in ("SuccessExitStatus=", "RestartPreventExitStatus="):
        assert not any(line.startswith(key) and str(EXIT_DISK_REFUSED) in line for line in lines), (
            key
        )


@needs_root
def test_gibsey_up_on_a_full_disk_says_so_in_one_line(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """`gibsey up` on a data directory (identity and ledger made earlier) whose tmpfs has no
    byte left: SQLite cannot even create its WAL files. Must hold: no traceback (before: one,
    exit 1), one line naming the data directory, the refused write and ENOSPC and saying to free
    space, exit status EXIT_DISK_REFUSED; once the filler is deleted the ledger verifies with
    its one entry and a node starts."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        data = disk / "data"
        assert gibsey("ledger", "mint", "alice", "5", "--data", str(data)).returncode == 0
        filler = fill(disk)
        up = ["up", "--data", str(data), "--broker", mosquitto.url, "--http", "127.0.0.1:0"]
        done = gibsey(*up)
        assert done.returncode == EXIT_DISK_REFUSED, done.stderr
        line = one_clear_line(done, "up", data)
        assert line.endswith("free space and start again"), line
        filler.unlink()
        verified = ledger_verify(data)
        assert verified.stdout.startswith("ok: 1 entries"), verified.stdout
        assert temp_files(disk) == []


@needs_root
def test_under_systemd_gibsey_up_on_a_full_disk_says_why_while_it_waits(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`gibsey up` on a full tmpfs as systemd starts it (NOTIFY_SOCKET, WATCHDOG_USEC=2 s).
    Must hold: it tells systemd why in STATUS= (the same line) and keeps the watchdog fed while
    it waits before it exits - a pause of DISK_RETRY_S, so that the unit's restarts go on
    without spending its start limit (20 in 10 minutes) in seconds."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        data = disk / "data"
        assert gibsey("ledger", "mint", "alice", "5", "--data", str(data)).returncode == 0
        filler = fill(disk)
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="2000000")
        up = [sys.executable, "-m", "gibsey", "up", "--data", str(data), "--broker", mosquitto.url]
        proc = subprocess.Popen(up, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        try:
            said: list[str] = []
            while said.count("WATCHDOG=1") < 3:
                said.append(notify.recv(4096).decode())
            assert proc.poll() is None  # still waiting, its watchdog fed
        finally:
            stop_process(proc, signal.SIGTERM)
            notify.close()
        status = [s for s in said if s.startswith("STATUS=")]
        assert len(status) == 1 and f"the data directory {data} has no room" in status[0], said
        filler.unlink()


def refused_writes(data: Path) -> None:
    """`gibsey ledger gift` and `mint` on `data`, on a full disk: each says so in one line."""
    for args in (["gift", "alice", "bob", "1"], ["mint", "bob", "2"]):
        done = gibsey("ledger", *args, "--data", str(data))
        assert done.returncode == EXIT_DISK_REFUSED, done.stderr
        assert one_clear_line(done, "ledger", data).endswith("free space and try again")
        assert "appended" not in done.stdout


@needs_root
def test_ledger_writes_on_a_full_disk_say_so_in_one_line_and_store_nothing(tmp_path: Path) -> None:
    """`gibsey ledger gift` and `mint` on a full tmpfs: first with nothing else open (SQLite
    cannot create its WAL files), then beside a process that holds the ledger open (as a running
    node does: the command opens the ledger and its commit is refused). Must hold each time: no
    traceback (before: one), one line naming the data directory and ENOSPC, exit status
    EXIT_DISK_REFUSED, nothing stored; after the filler is deleted `gibsey ledger verify` says
    ok with the one entry made before, and no gift is stored."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        data = disk / "data"
        assert gibsey("ledger", "mint", "alice", "5", "--data", str(data)).returncode == 0
        filler = fill(disk)
        refused_writes(data)
        filler.unlink()
        beside = Store.open(data)  # its WAL files stay while it is open
        filler = fill(disk)
        refused_writes(data)
        beside.refresh()
        assert beside.count() == 1
        beside.close()
        filler.unlink()
        verified = ledger_verify(data)
        assert verified.stdout.startswith("ok: 1 entries"), verified.stdout
        assert own_entries(data) == set()
        assert temp_files(disk) == []


@needs_root
def test_a_write_beside_a_node_the_full_disk_stops_committing_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's ledger (its batch open, as the node opens it) whose commit the full tmpfs
    refuses: it folds its entry log back into a new batch and holds the write lock again.
    `gibsey ledger mint` beside it must say the disk is full in one line (ENOSPC, exit 75)
    without waiting for that lock (before: it waited BUSY_TIMEOUT_MS, 45 s, then said "database
    is locked"); `gibsey doctor` counts the node's mint as acknowledged, in the entry log only
    (before: "0 entries in 0 feeds check out"); it is stored once space returns, the command's
    never."""
    monkeypatch.setattr(Store, "_arm_timer", lambda self, after_s: None)  # the test commits
    with tmpfs(tmp_path / "disk", "4m") as disk:
        data = disk / "data"
        key = SigningKey.generate()
        ledger = Ledger.open(data, key, commit_every_s=30.0)
        try:
            ledger.store.append(key, "mint", MINT)
            filler = fill(disk)
            with pytest.raises(StorageError):
                ledger.store.commit()
            assert ledger.store._batch_since is not None  # its write lock, held again
            began = time.monotonic()
            done = gibsey("ledger", "mint", "bob", "2", "--data", str(data))
            waited = time.monotonic() - began
            assert done.returncode == EXIT_DISK_REFUSED, done.stderr
            assert one_clear_line(done, "ledger", data).endswith("free space and try again")
            assert waited < BUSY_TIMEOUT_MS / 1000, f"it waited {waited:.0f} s for the lock"
            out = gibsey("doctor", "--data", str(data)).stdout
            kept = "0 entries in 0 feeds check out; 1 more acknowledged, in the entry log only"
            assert kept in out, out
            filler.unlink()
            ledger.store.commit()
        finally:
            ledger.close()
        store = Store.open(data)
        try:
            assert [e.body["actor"] for e in store.iter_ordered()] == ["visitor:1"]
        finally:
            store.close()


# ---- what a node shows of it ----------------------------------------------------------------


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def doctor(data: Path) -> str:
    """`gibsey doctor`'s line about what the running node says of its disk."""
    out = gibsey("doctor", "--data", str(data)).stdout
    lines = [line for line in out.splitlines() if line[6:].startswith("node disk")]
    assert len(lines) == 1, out
    return lines[0]


async def refused_rituals(http: httpx.AsyncClient, node: Node, n: int) -> int:
    """`n` Read turns by as many visitors, each minting a token the full disk refuses: how many
    mints the runtime counted refused."""
    runtime = node.parts.glyph
    assert runtime is not None
    for i in range(n):
        assert (await turn(http, "read", f"visitor-{i}"))["error"] == ""
    await until(lambda: runtime.disk_refused >= n, f"{n} refused ritual mints")
    return runtime.disk_refused


@needs_root
async def test_metrics_and_doctor_show_the_refused_writes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A running node whose tmpfs is filled to the last byte; three visitors turn Read (each
    turn mints a token the disk refuses). Must hold: /metrics says the disk refuses writes
    (gibsey_disk_refusing 1), counts the refused writes and exactly the runtime's refused
    ritual mints, and `gibsey doctor` has a FAIL line saying so with that count; once the
    filler is deleted and the node writes again, gibsey_disk_refusing is 0 and doctor's line warns
    that those ritual tokens were not stored (before: none of these metrics or lines)."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        data = disk / "data"
        async with node_on(data, mosquitto) as (node, http):
            filler = fill(disk)
            rituals = await refused_rituals(http, node, 3)
            text = (await http.get("/metrics")).text
            assert metric(text, "gibsey_disk_refusing") == 1
            assert metric(text, "gibsey_ritual_writes_refused_total") == rituals
            assert metric(text, "gibsey_disk_refused_writes_total") >= rituals
            line = await asyncio.to_thread(doctor, data)  # the node answers it meanwhile
            lost = f"; {rituals} ritual mints/gifts not stored"
            assert line.startswith("FAIL") and lost in line, line
            filler.unlink()
            # The node's next write (its run record's heartbeat, every second here) ends it.
            await until(lambda: node.disk.episode is None, "the episode to end")
            text = (await http.get("/metrics")).text
            assert metric(text, "gibsey_disk_refusing") == 0
            line = await asyncio.to_thread(doctor, data)
            assert line.startswith("warn") and lost in line, line


@needs_root
async def test_a_graphql_write_on_a_full_disk_is_an_answer_not_a_logged_traceback(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A running node with its story's canon imported, whose tmpfs is then filled to the last
    byte; an authorised GraphQL createBranch. Must hold: the answer is one GraphQL error saying
    the disk has no room; whatever it says was stored is what is there once space returns (the
    ledger's entry log may take the entry into its last block's slack: the answer then says it
    was recorded and the branch exists once the story view catches up; else nothing is); and
    the node logs no traceback for it (before: one per mutation; the node says it once)."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        async with node_on(disk / "data", mosquitto) as (node, http):
            story = node.parts.story
            assert story is not None
            await asyncio.to_thread(story.import_corpus, read_corpus(SAMPLE), actor="an-author")
            filler = fill(disk)
            caplog.clear()
            query = 'mutation { createBranch(name: "fox", actor: "london-fox") { commit } }'
            answer = (await http.post("/graphql", json={"query": query}, headers=AUTH)).json()
            assert answer["data"] is None, answer
            [error] = answer["errors"]
            assert "No space left on device (ENOSPC)" in error["message"], error
            assert [r for r in caplog.records if r.exc_info] == []
            filler.unlink()
            await asyncio.to_thread(story.sync)
            recorded = error["message"].startswith("recorded on the ledger")
            assert (story.graph.branch("fox") is not None) == recorded, error


async def test_openapi_lists_507_on_the_operations_that_store(gateway_node: GatewayNode) -> None:
    """/openapi.json as a client generator reads it. Must hold: every operation that stores on
    the node's disk before answering (gifts, proposals, votes) lists 507 with a description,
    and the glyph turn, which stores nothing before it answers, does not."""
    openapi = (await gateway_node.http.get("/openapi.json")).json()
    stores = {"/api/ledger/gift", "/api/ledger/proposals", "/api/ledger/proposals/{proposal}/votes"}
    listed = {
        path
        for method, path, _ in mutating_operations(openapi)
        if "507" in openapi["paths"][path][method.lower()].get("responses", {})
    }
    assert listed == stores
    for path in stores:
        assert "disk" in openapi["paths"][path]["post"]["responses"]["507"]["description"]


# ---- files written at a start -----------------------------------------------------------------


@needs_root
def test_the_start_count_on_a_full_disk_is_counted_and_reported(tmp_path: Path) -> None:
    """The metrics' start count rewritten on a tmpfs with no byte left. Must hold: the start
    is counted all the same (the old count plus one), the old file is intact, no temp file is
    left, and the refusal is reported to the node's DiskHealth (before: only a log line)."""
    with tmpfs(tmp_path / "disk", "256k") as disk:
        (disk / "starts").write_text("4\n")
        fill(disk)
        health = DiskHealth()
        assert count_start(disk, health) == 5
        assert (disk / "starts").read_text() == "4\n"
        assert temp_files(disk) == []
        assert health.episode is not None and health.episode.first.errno_name == "ENOSPC"
        assert "starts" in str(health.episode.first)


@needs_root
async def test_a_node_whose_disk_fills_before_its_start_serves_without_gateway_json(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A node made with room on a tmpfs, which is then filled to the last byte before the node
    starts (its run record, clock ceiling and gateway.json are refused). Must hold: the start
    does not fail, the gateway serves (status and reads), no gateway.json or temp file is
    left, and the refused write of gateway.json counts in the node's DiskHealth."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        config = GibseyConfig(gateway=GatewayConfig(listen="127.0.0.1:0", token=TOKEN))
        node = Node(disk / "data", config)
        fill(disk)
        async with started(node, mosquitto.url):
            gateway = node.parts.gateway
            assert gateway is not None
            await asyncio.wait_for(gateway.ready.wait(), 10)
            refused = node.disk.refused_total
            gateway._announce()  # what serve() did at the start, once more: counted again
            assert node.disk.refused_total == refused + 1
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                assert (await http.get("/api/status")).status_code == 200
                assert (await http.get("/api/ledger/balances")).status_code == 200
            assert not (disk / "data" / PORT_FILE).exists()
            assert node.disk.episode is not None
        assert temp_files(disk) == []


# ---- stopping ---------------------------------------------------------------------------------


def open_files(name: str) -> list[str]:
    """This process's open files whose name starts with `name` (agents.db, its WAL files)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.basename(target).startswith(name):
            found.append(target)
    return found


async def test_a_stopped_node_holds_agents_db_no_more(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A node started and stopped in this process. Must hold: while it runs agents.db is open;
    after Node.stop() no file descriptor of this process points at agents.db or its WAL files
    (before: the agents part never closed it)."""
    node = Node(tmp_path / "data", GibseyConfig())
    async with started(node, mosquitto.url):
        assert open_files("agents.db")
    assert open_files("agents.db") == []


def _store_refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cannot save its store" in r.getMessage()]


async def test_a_broker_store_it_cannot_save_is_said_in_the_nodes_log_and_not_on_the_card(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried (an outside tester): /dev/shm full under the embedded Mosquitto's store. It could
    not save the store, and wrote `Error: No space left on device.` ~10 times a dial turn to
    mosquitto.log in the data directory (538 KB for 1,100 turns, never rotated): the card worn
    by what was meant to spare it, and the node said nothing. Must hold: Mosquitto's lines go
    to the node's log, paced, saying what a store that cannot be saved means; no log file is
    written beside its configuration."""
    from gibsey.core.mqtt import ClientSettings, Session, new_client_id
    from gibsey.harness.ports import free_port
    from gibsey.harness.waiting import until as wait_until_async
    from gibsey.node.spine.broker import MosquittoChild, find_mosquitto
    from tests.hostile.test_disk import fill, tmpfs

    binary = find_mosquitto()
    assert binary is not None
    caplog.set_level(logging.WARNING, logger="gibsey")
    with tmpfs(tmp_path / "data", "1m") as data:
        broker = MosquittoChild(binary, "127.0.0.1", free_port(), data, in_ram=False)
        await broker.start()
        try:
            fill(data)
            async with Session(ClientSettings(broker.url, new_client_id("store"))) as client:
                for n in range(20):  # each a change the broker saves at once (autosave)
                    await client.publish(f"gibsey/test/{n}", b"x" * 512, qos=1, retain=True)
            await wait_until_async(lambda: _store_refusals(caplog), 10, "the refusal said")
        finally:
            await broker.stop()
        assert not (broker.folder / "mosquitto.log").exists()
    lines = _store_refusals(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]  # paced: one line, not 20
    assert "No space left on device" in lines[0].getMessage()


@needs_root
async def test_a_clean_stop_on_a_full_disk_says_what_was_not_written_in_one_line(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried (an outside tester): SIGTERM to a node whose card was full printed a 30-line
    traceback (StorageError from AgentService.close / flush_tensor) before "stopped cleanly".
    Here the tmpfs is filled to its last byte, then rituals are counted (they need no write),
    then the node stops. Must hold: no traceback in the log; one line saying what was not
    written (the Agency Tensor's counts) and why (the disk, its errno)."""
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        async with node_on(disk / "data", mosquitto) as (node, http):
            agents = node.parts.agents
            assert agents is not None
            filler = fill(disk)
            for n in range(3):
                await turn(http, "dream", f"visitor-{n}")
            assert agents.tensor.pending, "the rituals' counts wait to be written"
        filler.unlink()
    traced = [r for r in caplog.records if r.exc_info is not None]
    assert traced == [], [r.getMessage() for r in traced]
    said = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert len(said) == 1, said
    assert "Agency Tensor" in said[0] and "ENOSPC" in said[0], said[0]
