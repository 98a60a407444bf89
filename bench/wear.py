"""`gibsey bench wear`: bytes the node writes to its disk per dial turn (issue 19, first row).

A `gibsey up` process on a real Mosquitto, visitors' `glyph/rotated` at 5 turns/s with QoS 1 (as
a Pico W or a dashboard sends them; rotation 0, whose default program mints a token), until every
turn is performed (`ritual/performed`) and its mint acknowledged (`gift/txn`, announced only
after the entry's commit is on disk). Figure: the growth of the process's `write_bytes`
(/proc/PID/io: what it caused to be sent to the storage layer, counted by the kernel as it dirties
pages of the page cache, 4 KiB at a time) over the turns, per turn; the baseline is the size of
the ledger entry each turn adds (the bytes that must reach the disk), the goal 2,000 B a turn.
A mint is acknowledged once its group is in the ledger's entry log; the count starts and ends
when the SQLite batch holding the last acknowledged entry has committed (read from another
connection), so the turns pay for their own SQLite commits, no more and no less. A second run
measures the node as it was before the entry log (every group its own SQLite commit).

The floor rows measure, in the same run, what SQLite itself writes for the same rows in commits
as large as the node's (a bare SQLite with the store's schema): the part of the figure no node
code can cut while the ledger lives in SQLite's B-trees.

The nodes run in a directory of this machine (/var/tmp), and again, where the bench runs as root,
on an ext4 made and mounted as `gibsey image data-partition` makes the card's data partition, in
a file on a loop device: the kernel counts a filesystem's directory and inode pages with the
writes that dirty them, and an old, large filesystem writes more of them than the card's.

With `breakdown` (the suite does it on a second node) strace counts the bytes of the write
syscalls per file over the same turns: which files the bytes go to.

The last run is `make run`'s node: on its own embedded Mosquitto (a child process, saving its
store after every change), whose writes over the same turns are counted beside the node's: the
node and its broker together are what a Pi running `make run` writes to its card.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from gibsey.bench.nodeproc import open_rotation_throttle, start_up, stop, wait_for_file
from gibsey.bench.report import Row
from gibsey.core.config import NodeConfig
from gibsey.core.mqtt import ClientSettings, Session, new_client_id
from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.nodeproc import children_named
from gibsey.harness.ports import free_port
from gibsey.harness.turns import node_online
from gibsey.harness.waiting import GalleryError, wait_until
from gibsey.ledger.store import _INSERT as _STORE_INSERT
from gibsey.ledger.store import _SCHEMA as STORE_SCHEMA
from gibsey.ledger.store import DB_FILENAME
from gibsey.node.daemon import HEARTBEAT_S
from gibsey.node.image.cli import DATA_MKFS, DATA_MOUNT_OPTIONS
from gibsey.node.watchdog.rebirth import HEARTBEAT_FRACTION, HEARTBEAT_MAX_S, RUN_FILE, RunRecord

log = logging.getLogger(__name__)

TURNS = 500
RATE_PER_S = 5.0
WARMUP = 20  # turns before the count starts: first-start writes are not a turn's
GOAL_BYTES = 2000.0
ACTORS = 8
# Why the checkpoint row misses 2,000 B here (measured 2026-11-30, 3 runs: 2,122, 2,154, 2,220
# with it, of which ~200 the heartbeats of a node minutes old; 2,351 with the fold order index
# on (lamport, author, seq)) and not on the card's filesystem (1,835, the rows further down).
CHECKPOINT_LIMIT = (
    "not met on this machine's filesystem (on an ext4 made as the card's data partition, the "
    "rows below, it is: this one, larger and older, writes its directory and inode pages with "
    "more of the node's writes: one run.json rewrite alone 24-37 KB here, 4 KB there). What "
    "is left is this storage design's: SQLite's WAL writes each page twice, in the WAL at the "
    "commit and into the database at the checkpoint, and its index leaves split half full; "
    "the ledger's rows in a bare SQLite, commits as large as the node's, write the floor row "
    "below (~1,300 B an entry with the Lamport index the views fold by, ~1,450 with the "
    "(lamport, author, seq) index it replaced, ~1,200 with no fold index). The entry log "
    "adds one 4 KiB page per 2 s group (~410 B a turn at 5/s), SQLite's WAL index (-shm, a "
    "mapped file written back between commits) some, and run.json's heartbeat ~200 in a node "
    "minutes old (one every 10 s: the row below), a few bytes once the node is hours old. "
    "Tried, no better: WITHOUT ROWID (its table leaves split half full too), 1 KiB pages "
    "(more checkpoint pages), a rollback journal (~1,340 B an entry vs ~1,550 in a bare "
    "SQLite). Left: entries kept outside the B-trees, appended once"
)
# The node as it was before the entry log: every group of mints its own SQLite commit.
EACH_GROUP_COMMITS: dict[str, float | str] = {"ledger_commit_every_s": 0.0}
# make run's node with its embedded broker's store where it was before: in the data directory.
STORE_ON_DISK: dict[str, float | str] = {"embedded_broker_store": "data"}
FLOOR_COMMITS = 8  # bare-SQLite commits measured for the floor rows
IDLE_S = 120.0  # a node without turns (before them): its idle writes
IDLE_SETTLE_S = 10.0


@dataclass
class WearRun:
    turns: int
    write_bytes: int  # growth of /proc/PID/io write_bytes over the turns
    checkpoint_bytes: int  # what copying the turns' WAL pages into the databases wrote
    wal_commits: int  # commits in the ledger's WAL after the turns (read from its frames)
    wal_pages: int  # pages those commits wrote
    wal_restarts: int  # times the WAL started over during the turns (after a checkpoint)
    entry_bytes: float  # mean size of the ledger entries the turns added
    took_s: float
    idle_s: float = 0.0  # before the turns, a time with none
    idle_bytes: int = 0  # growth of write_bytes over it
    idle_rewrites: int = 0  # run.json rewrites (heartbeats) over it
    idle_rewrites_bytes: int = 0  # write_bytes' growth in the polls that saw one
    turn_rewrites: int = 0  # run.json rewrites during the turns
    turn_rewrites_bytes: int = 0  # write_bytes' growth in the polls that saw one
    broker_bytes: int = 0  # the embedded broker's write_bytes growth over the turns
    by_file: Counter[str] = field(default_factory=Counter)  # strace: bytes written per file
    syscalls: Counter[str] = field(default_factory=Counter)  # strace: calls per syscall

    @property
    def per_turn(self) -> float:
        return self.write_bytes / self.turns

    @property
    def with_checkpoint(self) -> float:
        return (self.write_bytes + self.checkpoint_bytes) / self.turns


def write_bytes(pid: int) -> int:
    """The kernel's count of bytes `pid` (all its threads) caused to be written to storage."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise GalleryError(f"/proc/{pid}/io has no write_bytes")


DATABASES = (DB_FILENAME, "story.sqlite3", "agents/agents.db")


def checkpoint(data: Path) -> int:
    """Copy what the node's databases hold in their WALs into the databases, from this process
    (the node goes on): the bytes that wrote. Before the turns, so the WALs hold none of
    theirs; after, what the turns owe the databases - paid by the node's next checkpoint, which
    the run may or may not have reached."""
    before = write_bytes(os.getpid())
    for name in DATABASES:
        if (data / name).exists():
            db = sqlite3.connect(data / name, timeout=30)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                db.close()
    return write_bytes(os.getpid()) - before


def wal_generation(path: Path) -> int:
    """The WAL's checkpoint sequence number: one more each time it starts over."""
    data = path.read_bytes()[:16] if path.exists() else b""
    return int.from_bytes(data[12:16], "big") if len(data) == 16 else 0


def wal_commits(path: Path) -> tuple[int, int]:
    """(commits, pages) in a SQLite WAL file, from its frame headers: a frame is one page; a
    commit's last frame holds the database size; frames of an older generation (another salt)
    do not count (sqlite.org/fileformat2.html, "WAL File Format")."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 32:
        return 0, 0
    page_size = int.from_bytes(data[8:12], "big")
    salt = data[16:24]
    commits = pages = 0
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        if data[offset + 8 : offset + 16] != salt:
            break
        pages += 1
        commits += int.from_bytes(data[offset + 4 : offset + 8], "big") != 0
    return commits, pages


def client_settings(url: str, name: str) -> ClientSettings:
    return ClientSettings(url, new_client_id(name), keepalive_s=10, connect_timeout_s=2.0)


def turn_event(node_id: str, n: int) -> bytes:
    return json.dumps(
        {
            "id": uuid.uuid4().hex,
            "node": node_id,
            "kind": "glyph/rotated",
            "lamport": n + 1,
            "wall": time.time(),
            "actor": f"visitor-{n % ACTORS}",
            "payload": {"symbol": n % 16, "rotation": 0},  # Read: mints a token
        }
    ).encode()


class _Acks:
    """The node's `gift/txn` mints (each a stored entry) and `ritual/performed`, counted."""

    def __init__(self) -> None:
        self.mints = 0
        self.last_entry = ""  # the hash (hex) of the last mint acknowledged
        self.performed = 0
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self, url: str, node_id: str) -> None:
        async with Session(client_settings(url, "wear-acks")) as session:
            await session.subscribe(f"gibsey/v1/{node_id}/gift/txn", qos=1)
            await session.subscribe(f"gibsey/v1/{node_id}/ritual/performed", qos=1)
            self.ready.set()
            async for message in session.messages():
                if message.topic.endswith("/gift/txn"):
                    txn = json.loads(message.payload)["payload"]
                    if txn["type"] == "mint":
                        self.mints += 1
                        self.last_entry = txn["entry"]
                elif message.topic.endswith("/ritual/performed"):
                    # Only its own topic (harness/turns.py Answers: a broker may hand over
                    # retained messages of others).
                    self.performed += 1
                self._changed.set()

    async def reach(self, n: int, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while self.mints < n or self.performed < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise GalleryError(
                f"{self.mints} mints and {self.performed} rituals of {n} after {timeout_s:g}s"
            ) from None


async def _send(url: str, node_id: str, first: int, count: int, rate_per_s: float) -> None:
    loop = asyncio.get_running_loop()
    async with Session(client_settings(url, "wear-turns")) as session:
        next_at = loop.time()
        for n in range(first, first + count):
            await session.publish(
                f"gibsey/v1/{node_id}/glyph/rotated", turn_event(node_id, n), qos=1
            )
            next_at += 1.0 / rate_per_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))


async def _drive(
    url: str,
    node_id: str,
    pids: tuple[int, ...],
    data: Path,
    turns: int,
    rate_per_s: float,
    strace: Path | None,
    idle: _Rewrites,
    beats: _Rewrites,
    idle_s: float = 0.0,
) -> tuple[list[int], int, tuple[int, int, int], float, int]:
    """Over `idle_s` before any turn, the growth of the node's write_bytes (and the run.json
    rewrites, to `idle`); then warm up, and `turns` turns: the growth of write_bytes over them
    (of each of `pids`, the node's first), the
    checkpoint they owe, the ledger WAL's commits and pages (checkpointed just before: the
    turns' own), how long they took (and the rewrites meanwhile, to `beats`)."""
    await node_online(url, node_id, connects=1, timeout_s=60)
    idle_bytes = 0
    if idle_s:
        await asyncio.sleep(IDLE_SETTLE_S)  # the node's first-start writes are not idle ones
        idle_start = write_bytes(pids[0])
        await idle.watch(idle_s)
        idle_bytes = write_bytes(pids[0]) - idle_start
    acks = _Acks()
    listener = asyncio.create_task(acks.run(url, node_id))
    try:
        await asyncio.wait_for(acks.ready.wait(), 30)
        await _send(url, node_id, 0, WARMUP, rate_per_s)
        await acks.reach(WARMUP, timeout_s=60)
        await committed(data, acks.last_entry)
        checkpoint(data)
        wal = data / f"{DB_FILENAME}-wal"
        generation = wal_generation(wal) + 1  # the checkpoint emptied it: the next commit restarts
        tracer = _strace(pids[0], strace) if strace is not None else None
        start, started = [write_bytes(pid) for pid in pids], time.monotonic()
        watching = asyncio.create_task(beats.watch())
        await _send(url, node_id, WARMUP, turns, rate_per_s)
        await acks.reach(WARMUP + turns, timeout_s=60 + turns / rate_per_s)
        # Acknowledged is in the entry log; the turns' bytes include their SQLite commit.
        await committed(data, acks.last_entry)
        grown = [write_bytes(pid) - before for pid, before in zip(pids, start, strict=True)]
        took = time.monotonic() - started
        watching.cancel()
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)  # strace detaches and writes out what it has
            tracer.wait(30)
        commits, pages = wal_commits(wal)
        restarts = max(0, wal_generation(wal) - generation)
        return grown, checkpoint(data), (commits, pages, restarts), took, idle_bytes
    finally:
        listener.cancel()


async def committed(data: Path, entry_hex: str, timeout_s: float = 60.0) -> None:
    """Until another connection reads the entry (hex hash) in the node's ledger: committed,
    and with it every entry before it (a batch commits whole, in order)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        db = sqlite3.connect(f"file:{data / DB_FILENAME}?mode=ro", uri=True, timeout=30)
        try:
            row = db.execute(
                "SELECT 1 FROM entries WHERE hash = ?", (bytes.fromhex(entry_hex),)
            ).fetchone()
        finally:
            db.close()
        if row is not None:
            return
        if loop.time() > deadline:
            raise GalleryError(f"entry {entry_hex[:16]} not committed after {timeout_s:g}s")
        await asyncio.sleep(0.1)


class _Rewrites:
    """run.json's replacements (write_atomic renames a new file over it: the node's heartbeat),
    seen by polling its inode every 50 ms, and the growth of the node's write_bytes in the
    polls that saw one: what the rewrites cost (the node's other writes in those 50 ms count
    with them)."""

    def __init__(self, path: Path, pid: int) -> None:
        self.path, self.pid = path, pid
        self.count = 0
        self.cost = 0

    async def watch(self, for_s: float = float("inf")) -> None:
        """For `for_s` seconds, or until cancelled."""
        loop = asyncio.get_running_loop()
        end, seen, written = loop.time() + for_s, _inode(self.path), write_bytes(self.pid)
        while loop.time() < end:
            await asyncio.sleep(0.05)
            inode, now = _inode(self.path), write_bytes(self.pid)
            if inode not in (seen, 0):
                self.count += 1
                self.cost += now - written
            seen, written = inode or seen, now


def _inode(path: Path) -> int:
    """`path`'s inode number; 0 while it is missing (between a rename's two halves)."""
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_ino
    return 0


def heartbeats_per_day(every_s: float = HEARTBEAT_S, days: int = 1) -> int:
    """run.json rewrites of a node up for `days` days, by the rule RunRecord.heartbeat_due
    follows (its 1 s status tick ignored)."""
    at_s = last_s = 0.0
    count = 0
    while at_s < days * 86400:
        wait_s = max(every_s, min(HEARTBEAT_MAX_S, at_s * HEARTBEAT_FRACTION))
        at_s = last_s = last_s + wait_s
        count += 1
    return count


def _strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
    tracer = subprocess.Popen(
        ["strace", "-f", "-y", "-qq", "-o", str(out), "-p", str(pid), "-e", "trace=%desc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # strace is attached once it has written its first line (the process's threads are busy).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    return tracer


# A call and, when it did not block, its result; a blocked one (an fsync, mostly) is printed
# "<unfinished ...>" and its result on a later line: counted, its bytes not.
_CALL = re.compile(r"^\d+\s+(\w+)\((\d+)<([^>]*)>(?:.*\)\s+=\s+(-?\d+))?")
_ATOMIC = re.compile(r"^\.(.+)\.[0-9a-f]+\.tmp$")  # core/identity.write_atomic's temporary files
_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}
_SYNCS = {"fsync", "fdatasync", "sync_file_range"}


def parse_strace(text: str) -> tuple[Counter[str], Counter[str]]:
    """Bytes written per file and calls per write/sync syscall, from `strace -y` output."""
    by_file: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        m = _CALL.match(line)
        if m is None or (m[1] not in _WRITES and m[1] not in _SYNCS):
            continue
        if not m[3].startswith("/") or "/node-" not in m[3]:
            continue  # a socket, a pipe, /dev/null: not the node's disk
        path = _ATOMIC.sub(r"\1 (rewritten whole)", Path(m[3]).name)
        calls[f"{m[1]} {path}"] += 1
        if m[1] in _WRITES and m[4] is not None and int(m[4]) > 0:
            by_file[path] += int(m[4])
    return by_file, calls


def _entry_bytes(data: Path, turns: int) -> float:
    db = sqlite3.connect(f"file:{data / DB_FILENAME}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT length(raw) FROM entries ORDER BY lamport DESC LIMIT ?", (turns,)
        ).fetchall()
    finally:
        db.close()
    return statistics.fmean(r[0] for r in rows) if rows else 0.0


def measure(
    work: Path,
    broker: Mosquitto | None,
    turns: int = TURNS,
    rate_per_s: float = RATE_PER_S,
    breakdown: bool = False,
    settings: dict[str, float | str] | None = None,
    idle_s: float = 0.0,
) -> WearRun:
    """One fresh node on `broker` (None: its own embedded Mosquitto, whose writes are counted
    too; its data under `work`), `turns` turns at `rate_per_s`, with these `[node]` settings
    (None: the defaults)."""
    data = work / f"node-{uuid.uuid4().hex[:6]}"
    open_rotation_throttle(data)
    if settings:
        toml = data / "gibsey.toml"
        lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
        toml.write_text(toml.read_text().replace("[node]\n", f"[node]\n{lines}"))
    if broker is None:
        port = free_port()
        node, url = start_up(data, "", GIBSEY_EMBEDDED_PORT=str(port)), f"mqtt://127.0.0.1:{port}"
    else:
        node, url = start_up(data, broker.url), broker.url
    trace = work / f"strace-{data.name}.txt" if breakdown else None
    try:
        wait_for_file(node, data / "node_id", 60, "the node")
        node_id = (data / "node_id").read_text().strip()
        pids = (node.pid,) if broker is not None else (node.pid, embedded_mosquitto(node.pid))
        idle, beats = _Rewrites(data / RUN_FILE, node.pid), _Rewrites(data / RUN_FILE, node.pid)
        grown, owed, wal, took, idle_bytes = asyncio.run(
            _drive(url, node_id, pids, data, turns, rate_per_s, trace, idle, beats, idle_s)
        )
    finally:
        stop(node, timeout_s=30)
    entry = _entry_bytes(data, turns)
    run = WearRun(turns, grown[0], owed, *wal, entry, took, idle_s, idle_bytes)
    run.broker_bytes = sum(grown[1:])
    run.idle_rewrites, run.idle_rewrites_bytes = idle.count, idle.cost
    run.turn_rewrites, run.turn_rewrites_bytes = beats.count, beats.cost
    if trace is not None and trace.exists():
        run.by_file, run.syscalls = parse_strace(trace.read_text(errors="replace"))
    return run


def embedded_mosquitto(node_pid: int, timeout_s: float = 30.0) -> int:
    """The pid of the node's embedded Mosquitto (its child process of that name)."""
    found: list[int] = wait_until(
        lambda: children_named(node_pid, "mosquitto"), timeout_s, "the node's Mosquitto"
    )
    return found[0]


def _breakdown_rows(run: WearRun) -> list[Row]:
    rows = []
    syncs = sum(n for call, n in run.syscalls.items() if call.split()[0] in _SYNCS)
    for path, written in run.by_file.most_common(6):
        calls = sum(n for call, n in run.syscalls.items() if call.endswith(f" {path}"))
        rows.append(
            Row(
                f"  written to {path} per turn (strace, write syscalls)",
                written / run.turns,
                run.entry_bytes,
                "B",
                note=f"{calls / run.turns:.2f} calls/turn",
            )
        )
    rows.append(Row("  fsync/fdatasync calls per turn (strace)", syncs / run.turns, None, "calls"))
    return rows


def _rows(runs: list[WearRun], what: str) -> list[Row]:
    per_turn = statistics.median(r.per_turn for r in runs)
    owed = statistics.median(r.with_checkpoint for r in runs)
    entry = statistics.median(r.entry_bytes for r in runs)
    each = ", ".join(f"{r.per_turn:,.0f}" for r in runs)
    commits = sum(r.wal_commits for r in runs)
    pages = sum(r.wal_pages for r in runs) / max(1, commits)
    per_commit = _entries_per_commit(runs)
    entries = (
        f"{per_commit:.1f} entries"
        if per_commit is not None
        else "the WAL started over during the turns: the last part's commits only; ~1 entry"
    )
    return [
        Row(
            f"{what}: bytes written per dial turn (/proc/PID/io write_bytes) / the ledger entry",
            per_turn,
            entry,
            "B",
            limit=("<=", GOAL_BYTES),
            note=f"median of {len(runs)} nodes x {runs[0].turns} turns at {RATE_PER_S:g}/s: {each}",
        ),
        Row(
            f"{what}: the same with the checkpoint the turns owe their databases",
            owed,
            entry,
            "B",
            limit=("<=", GOAL_BYTES),
            note="the WAL pages copied into the database files, paid at a later checkpoint",
        ),
        Row(
            f"  {what}: of those bytes, the run.json heartbeats' (a node minutes old)",
            statistics.median(r.turn_rewrites_bytes / r.turns for r in runs),
            entry,
            "B",
            note=f"{', '.join(str(r.turn_rewrites) for r in runs)} rewrites in the turns "
            f"(every {HEARTBEAT_S:g} s, then a tenth of the uptime: 30 min apart once a day "
            "old, one a few bytes a turn at this rate); write_bytes in the 50 ms that "
            "saw each",
        ),
        Row(
            f"{what}: ledger WAL pages per commit (from the WAL's frame headers)",
            pages,
            None,
            "pages",
            note=f"{entries} per commit: a commit rewrites page 1 (the file grew), "
            "the table's interior and last leaf, each index's last leaf",
        ),
    ]


def sqlite_floor(work: Path, per_commit: int, entry_bytes: float, fold_index: bool) -> float:
    """Bytes per entry that SQLite itself writes for the ledger's table and indexes: the
    store's schema (with or without the fold order index) in a bare SQLite, commits of
    `per_commit` rows of the entries' size (random bytes: SQLite does not compress) as the
    node's batches hold, each fsynced into the WAL and checkpointed into the database - with
    no entry log, no WAL index shared with other processes (exclusive locking) and no node.
    What the node writes beyond it is its own."""
    path = work / f"floor-{uuid.uuid4().hex[:6]}.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("locking_mode=EXCLUSIVE", "journal_mode=WAL", "synchronous=FULL"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("PRAGMA wal_autocheckpoint=0")
        for statement in STORE_SCHEMA.split(";"):
            if statement.strip() and (fold_index or "entries_lamport" not in statement):
                db.execute(statement)
        author, size, seq = os.urandom(32), round(entry_bytes), 0
        before = write_bytes(os.getpid())
        for commit in range(1, FLOOR_COMMITS + 1):
            db.execute("BEGIN")
            for _ in range(per_commit):
                seq += 1
                row = (author, seq, os.urandom(32), seq, "mint", os.urandom(size))
                db.execute(_STORE_INSERT, row)
            db.execute("COMMIT")
            if commit % 4 == 0:  # a checkpoint every 4 commits (the node's: by size, later)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return (write_bytes(os.getpid()) - before) / seq
    finally:
        db.close()


def _entries_per_commit(runs: list[WearRun]) -> float | None:
    """Entries per ledger commit over the runs whose WAL holds every commit of their turns
    (None: none does, it started over during the turns)."""
    whole = [r for r in runs if r.wal_restarts == 0]
    commits = sum(r.wal_commits for r in whole)
    return sum(r.turns for r in whole) / commits if commits else None


def _floor_rows(work: Path, runs: list[WearRun]) -> list[Row]:
    measured_per_commit = _entries_per_commit(runs)
    per_commit = 125 if measured_per_commit is None else round(measured_per_commit)
    entry = statistics.median(r.entry_bytes for r in runs)
    rows = []
    for fold_index, which in ((True, "the store's schema"), (False, "without the fold index")):
        measured = [sqlite_floor(work, per_commit, entry, fold_index) for _ in range(3)]
        rows.append(
            Row(
                f"  floor: a bare SQLite, {which}, {per_commit} entries a commit: bytes an "
                "entry, WAL + checkpoint",
                statistics.median(measured),
                entry,
                "B",
                note=f"median of 3: {', '.join(f'{b:,.0f}' for b in measured)}; no entry log, "
                "no shared WAL index, no node",
            )
        )
    return rows


def rewrite_bytes(work: Path, times: int = 20) -> float:
    """What one run.json heartbeat (write_atomic: a new file, fsync, rename, directory fsync)
    adds to this process's write_bytes when what it touches was written back before it: a
    day-old node's heartbeats are 30 min apart, and the kernel writes dirty pages back after
    30 s. (Back to back, the file's directory and inode pages are still dirty from the one
    before: 4,096 B a rewrite, a third or less of what it costs alone.)"""
    record = RunRecord(work / "run-record")
    record.data_dir.mkdir()
    record.begin()
    total = 0
    for _ in range(times):
        os.sync()  # what the writeback has done by the next heartbeat
        before = write_bytes(os.getpid())
        record.heartbeat()
        total += write_bytes(os.getpid()) - before
    return total / times


def _idle_rows(run: WearRun, each: float) -> list[Row]:
    """An idle node's writes: measured over `run.idle_s` (a node a minute old, its heartbeat
    still every 10 s), the heartbeats' share apart; a day old, by the heartbeat's schedule (one
    rewrite `each` bytes, measured alone) plus the rest at the rate measured (a minute-old
    node's window also holds its start-up writes, so this overstates a day-old node)."""
    rest_per_s = max(0, run.idle_bytes - run.idle_rewrites_bytes) / run.idle_s
    first, later = heartbeats_per_day(), heartbeats_per_day(days=2) - heartbeats_per_day()
    return [
        Row(
            f"idle node, a minute old: bytes written per hour ({run.idle_s:g} s, no turns)",
            run.idle_bytes / run.idle_s * 3600,
            None,
            "B",
            note=f"{run.idle_bytes:,} B, of which {run.idle_rewrites_bytes:,} in the 50 ms "
            f"around its {run.idle_rewrites} run.json rewrites",
        ),
        Row(
            "idle node, a day old: bytes written per day / with a heartbeat every 10 s (before)",
            each * later + rest_per_s * 86400,
            each * 86400 / HEARTBEAT_S + rest_per_s * 86400,
            "B",
            note=f"run.json: {each:,.0f} B a rewrite (measured alone: its file, directory and "
            f"inode written), {first} the first day, {later} a day after (was 8,640); the rest "
            f"{rest_per_s * 86400:,.0f} B/day at the idle rate measured beside the rewrites "
            "(a minute-old node's, so more than a day-old node writes)",
        ),
    ]


def _embedded_rows(in_ram: WearRun, on_disk: WearRun) -> list[Row]:
    """`make run`'s node: the node and its embedded Mosquitto together, the broker's store in
    RAM (the default) and in the data directory (before)."""
    return [
        Row(
            f"make run's node and its embedded Mosquitto, {where}: bytes written per turn",
            (run.write_bytes + run.broker_bytes) / run.turns,
            run.entry_bytes,
            "B",
            limit=("<=", GOAL_BYTES),
            note=f"the broker's own {run.broker_bytes / run.turns:,.0f} B a turn (its store "
            "saved whole after every message it takes); 1 node x "
            f"{run.turns} turns at {RATE_PER_S:g}/s",
        )
        for run, where in (
            (in_ram, "its store in RAM (the default)"),
            (on_disk, 'its store in the data directory (embedded_broker_store = "data"; before)'),
        )
    ]


def _aged_row(runs: list[WearRun], each: float) -> Row:
    """The turns with their checkpoint, their own run.json heartbeats (a node minutes old: one
    every 10-15 s) replaced by a node's a few hours old or more: one every HEARTBEAT_MAX_S,
    each costing `each` (measured alone). A gallery's node is that old but for its first
    minutes of the day; the measured row above is the one issue 19 asks for."""
    aged = statistics.median(
        r.with_checkpoint - r.turn_rewrites_bytes / r.turns + each / (HEARTBEAT_MAX_S * RATE_PER_S)
        for r in runs
    )
    return Row(
        "  the same with a node's heartbeats once it is 5 hours old or more (one every "
        f"{HEARTBEAT_MAX_S / 60:g} min) in place of the turns' own",
        aged,
        statistics.median(r.entry_bytes for r in runs),
        "B",
        limit=("<=", GOAL_BYTES),
        note=f"the row above less the heartbeat row, plus {each:,.0f} B (one rewrite, "
        f"measured alone) every {HEARTBEAT_MAX_S:g} s at {RATE_PER_S:g} turns/s",
    )


CARD_FS_BYTES = 2 * 2**30  # the card filesystem's file (sparse): room for the turns' nodes


@contextlib.contextmanager
def card_filesystem(work: Path) -> Iterator[Path | None]:
    """An ext4 made and mounted as `gibsey image data-partition` makes the card's data partition
    (DATA_MKFS, DATA_MOUNT_OPTIONS), in a sparse file on a loop device: the node's writes as
    the card's filesystem counts them (this machine's own, older and larger, writes its
    directory and inode pages more often). None where it cannot be made: not root, or no
    loop device (the reason is logged)."""
    image, mount = work / "card-data.ext4", work / "card-data"
    if os.geteuid() != 0:
        yield None
        return
    with image.open("wb") as f:
        f.truncate(CARD_FS_BYTES)
    mount.mkdir()
    made = subprocess.run([*DATA_MKFS, str(image)], capture_output=True, text=True)
    if made.returncode == 0:
        opts = f"loop,{DATA_MOUNT_OPTIONS}"
        made = subprocess.run(
            ["mount", "-o", opts, str(image), str(mount)], capture_output=True, text=True
        )
    if made.returncode != 0:
        log.warning("wear: no card filesystem (%s)", (made.stderr or made.stdout).strip())
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-wear-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto").start()
        try:
            runs = [measure(work, broker) for _ in range(3)]
            before = [measure(work, broker, settings=EACH_GROUP_COMMITS)]
            traced = measure(
                work, broker, breakdown=shutil.which("strace") is not None, idle_s=IDLE_S
            )
            each = rewrite_bytes(work)
            floor = _floor_rows(work, runs)
            with card_filesystem(work) as card:
                on_card = [measure(card, broker) for _ in range(3)] if card else []
        finally:
            broker.stop()
        embedded = measure(work, None), measure(work, None, settings=STORE_ON_DISK)
    every = NodeConfig().ledger_commit_every_s
    rows = _rows(
        runs,
        f"groups of 2 s in the entry log, a SQLite commit every {every:g} s (the default)",
    )
    rows[1] = replace(rows[1], note=f"{rows[1].note}; {CHECKPOINT_LIMIT}")
    rows[3:3] = [_aged_row(runs, each), *floor]
    if on_card:
        rows += _rows(
            on_card,
            "the same on an ext4 made as the card's data partition (mkfs.ext4 defaults, "
            f"{DATA_MOUNT_OPTIONS}, a loop device)",
        )
    rows += _rows(before, "every group its own SQLite commit (before; ledger_commit_every_s = 0)")
    if traced.by_file:
        rows += _breakdown_rows(traced)
    return rows + _embedded_rows(*embedded) + _idle_rows(traced, each)
