"""A full, failing or read-only disk (issue 16, item 1), on real file systems mounted for the test.

What is tried: the node's data directory on a small tmpfs is filled up by gifts until SQLite can
no longer commit, then topped off to the last byte; an ext4 image on a loop device goes read-only
the way the kernel does it after an error (errors=remount-ro); an ext4 file system is shut down
under the store so every write fails with EIO. What must hold: a refused write never advances a
head past what is stored, the node says so once (`safety/alert` disk_full), HTTP answers 507 with
a JSON `error`, reads, rituals that need no write and the retained status go on, no temp file is
left behind, and once space returns writes resume by themselves with `gibsey ledger verify` ok and
every acknowledged gift stored.

Mounting needs root: without it these tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from gibsey.core.identity import load_or_create, write_atomic
from gibsey.core.lamport import LamportClock
from gibsey.core.storage import DiskHealth, StorageError
from gibsey.core.topics import status_topic
from gibsey.harness.nodeproc import spawn_up, wait_for_file
from gibsey.harness.waiting import stop_process
from gibsey.ledger.store import Store
from gibsey.node.config import GibseyConfig
from gibsey.node.daemon import Node
from gibsey.node.gateway.config import GatewayConfig
from tests.brokers import Mosquitto
from tests.conftest import Collector, CollectorFactory, started
from tests.events import topic

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounts a real tmpfs and an ext4 loop device: needs root"
)

TOKEN = "disk-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MEMO = "m" * 200  # a fat gift: the disk fills in tens of gifts, not thousands
EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
REPO = Path(__file__).resolve().parents[2]


# ---- real file systems ----------------------------------------------------------------------


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))  # something still holds a file: detach it anyway


def make_ext4(image: Path, size_mb: int = 32) -> Path:
    """An ext4 file system in the file `image`, of `size_mb`."""
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 file system: {made.stderr.strip()}")
    return image


@contextmanager
def ext4(path: Path, image: Path) -> Iterator[str]:
    """The ext4 `image` mounted at `path` on a loop device (errors=remount-ro, as on the SD
    image); yields the device's name (its /sys/fs/ext4/<name>/ directory)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an ext4 image on a loop device: {mounted.stderr.strip()}")
    try:
        source = _run("findmnt", "-n", "-o", "SOURCE", str(path)).stdout.strip()
        yield Path(source).name
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))


def rebooted(image: Path) -> Path:
    """What the card holds after a reboot: a copy of `image` (unmounted, or dead: a shut down
    or read-only file system writes nothing more), checked by e2fsck as at boot. A copy, because
    a mount namespace made meanwhile (`ip netns exec` in another test) may keep the original
    mounted, and mounting it again would give back that same dead file system."""
    copy = image.with_name(f"rebooted-{image.name}")
    shutil.copyfile(image, copy)
    checked = _run("e2fsck", "-f", "-y", str(copy))
    assert checked.returncode in (0, 1), checked.stdout  # 1: errors were corrected
    return copy


def fs_error(device: str) -> None:
    """An ext4 error on `device`, as a bad block would raise: errors=remount-ro makes the kernel
    take the file system read-only under every open file."""
    Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("disk test\n")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file in `directory` until the file system has not one byte left."""
    path = directory / name
    chunk = b"\0" * 65536
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    return path
                chunk = chunk[: max(1, len(chunk) // 16)]


def fill_but(directory: Path, keep_bytes: int) -> Path:
    """A filler file leaving about `keep_bytes` free in `directory`."""
    st = os.statvfs(directory)
    path = directory / "filler-part"
    path.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - keep_bytes))
    return path


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob(".*.tmp"))


def own_entries(data: Path, types: tuple[str, ...] = ("gift",)) -> set[str]:
    """Hashes of the entries of these types stored in `data`'s ledger."""
    store = Store.open(data)
    try:
        return {e.hash_hex for e in store.iter_ordered() if e.type in types}
    finally:
        store.close()


def ledger_verify(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gibsey", "ledger", "verify", "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def doctor_line(data: Path, name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gibsey", "doctor", "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    ).stdout
    lines = [line for line in out.splitlines() if line[6:].startswith(name)]
    assert lines, out
    return lines[0]


# ---- the store, the clock and atomic files on a full disk ----------------------------------


def test_a_full_disk_never_moves_the_store_head_past_what_is_stored(tmp_path: Path) -> None:
    """Appends on a 1 MB tmpfs until SQLite cannot commit (SQLite has already rolled the
    transaction back). Must hold: a StorageError (ENOSPC), never sqlite's "cannot rollback"; the
    head stays at the last stored entry, again and again; a second connection agrees; once the
    tmpfs grows, the next entry takes the next seq and the feed verifies with no gap."""
    key = SigningKey(bytes(range(32)))
    author = bytes(key.verify_key)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        store = Store.open(disk)
        stored = 0
        with pytest.raises(StorageError) as refused:
            for _ in range(100_000):
                store.append(key, "mint", {"actor": "visitor:1", "amount": 1, "ritual": "0:0"})
                stored += 1
        assert refused.value.errno == errno.ENOSPC
        head = store.head(author)
        assert head is not None and head.seq == stored
        for _ in range(3):
            with pytest.raises(StorageError):
                store.append(key, "mint", {"actor": "visitor:1", "amount": 1, "ritual": "0:0"})
        assert store.head(author) == head
        assert store.disk.episode is not None and store.disk.episode.refused == 4
        other = Store.open(disk)
        assert other.head(author) == head
        other.close()
        assert _run("mount", "-o", "remount,size=4m", str(disk)).returncode == 0
        e = store.append(key, "mint", {"actor": "visitor:1", "amount": 1, "ritual": "0:0"})
        assert e.seq == stored + 1
        assert store.disk.episode is None
        report = store.verify()
        assert report.ok and report.entries == stored + 1, report
        store.close()


def test_write_atomic_on_a_full_disk_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path,
) -> None:
    """`write_atomic` over an existing file on a tmpfs with no byte left. Must hold: a
    StorageError (ENOSPC), the old contents intact, and no 0-byte temp file left behind."""
    with tmpfs(tmp_path / "disk", "256k") as disk:
        target = disk / "run.json"
        target.write_bytes(b"old")
        fill(disk)
        with pytest.raises(StorageError) as refused:
            write_atomic(target, b"new" * 10_000)
        assert refused.value.errno == errno.ENOSPC
        assert target.read_bytes() == b"old"
        assert temp_files(disk) == []


def test_the_lamport_clock_keeps_ticking_on_a_full_disk(tmp_path: Path) -> None:
    """A Lamport clock whose ceiling file cannot be rewritten (its tmpfs has no byte left),
    ticked far past its reserved block. Must hold: every tick still returns a larger value, the
    refusal is reported once (one episode), no temp file is left, and once space returns the
    ceiling on disk is above every value handed out (a restart cannot reuse one)."""
    told: list[StorageError | None] = []
    health = DiskHealth(told.append)
    with tmpfs(tmp_path / "disk", "256k") as disk:
        clock = LamportClock(disk / "lamport", block=10, disk=health)
        filler = fill(disk)
        values = [clock.tick() for _ in range(100)]
        assert values == list(range(values[0], values[0] + 100))
        assert len(told) == 1 and isinstance(told[0], StorageError)
        assert told[0].errno == errno.ENOSPC
        assert temp_files(disk) == []
        filler.unlink()
        last = max(clock.tick() for _ in range(20))
        assert told[-1] is None  # writes work again: the episode ended
        assert int((disk / "lamport").read_text()) > last
        assert LamportClock(disk / "lamport", block=10).tick() > last


def test_a_write_in_place_on_a_full_disk_does_not_end_its_episode(tmp_path: Path) -> None:
    """Tried (an outside tester): on a card with 0 bytes free, the node said "the disk takes
    writes again" 7 times in a minute (a write that needed no new block worked: a page
    rewritten in place), and its metrics said it no longer refused, while every gift was.
    Must hold: while the disk has no room, a write that works does not end the episode; once
    room is back, the next one does."""
    told: list[StorageError | None] = []
    with tmpfs(tmp_path / "disk", "256k") as disk:
        health = DiskHealth(told.append, disk)
        page = disk / "page"
        page.write_bytes(bytes(4096))
        filler = fill(disk)
        with pytest.raises(OSError) as full:
            (disk / "new").write_bytes(bytes(8192))
        health.refused_write(StorageError(full.value.errno or 0, "a new file"))
        with page.open("r+b") as f:  # rewritten in place: needs no new block, works
            f.write(b"x" * 4096)
        assert health.wrote() is False and told == [told[0]] and health.episode is not None
        filler.unlink()
        assert health.wrote() is True and told[-1] is None and health.episode is None


def test_eio_under_the_store_is_refused_like_a_full_disk(tmp_path: Path) -> None:
    """An ext4 file system shut down under a live store (EXT4_IOC_SHUTDOWN: every write then
    fails with EIO, as a dying card does). Must hold: the append raises StorageError (EIO), the
    head does not move; after a reboot (the image checked and mounted again) the feed verifies
    and the next append takes the next seq."""
    key = SigningKey(bytes(range(32)))
    author = bytes(key.verify_key)
    mount = tmp_path / "ext4"
    image = make_ext4(tmp_path / "ext4.img")
    with ext4(mount, image):
        store = Store.open(mount)
        for _ in range(5):
            store.append(key, "mint", {"actor": "visitor:1", "amount": 1, "ritual": "0:0"})
        fd = os.open(mount, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        with pytest.raises(StorageError) as refused:
            store.append(key, "mint", {"actor": "visitor:1", "amount": 1, "ritual": "0:0"})
        assert refused.value.errno == errno.EIO
        head = store.head(author)
        assert head is not None and head.seq == 5
        store.close()
    with ext4(tmp_path / "after", rebooted(image)):
        store = Store.open(tmp_path / "after")
        report = store.verify()
        assert report.ok and report.entries == 5, report
        assert store.append(key, "mint", {"actor": "v", "amount": 1, "ritual": "0:0"}).seq == 6
        store.close()


# ---- a running node ---------------------------------------------------------------------


@asynccontextmanager
async def node_on(data: Path, broker: Mosquitto) -> AsyncIterator[tuple[Node, httpx.AsyncClient]]:
    """A node with its gateway, its data directory at `data`, on a real Mosquitto."""
    config = GibseyConfig(gateway=GatewayConfig(listen="127.0.0.1:0", token=TOKEN))
    config.node.status_interval = 1.0
    node = Node(data, config)
    node.heartbeat_s = 1.0  # the run record is rewritten at every status tick
    async with started(node, broker.url):
        gateway = node.parts.gateway
        assert gateway is not None
        await asyncio.wait_for(gateway.ready.wait(), 10)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            yield node, http


async def gift(http: httpx.AsyncClient, n: int) -> httpx.Response:
    body = {"giver": "alice", "receiver": f"bob-{n % 7}", "amount": 1, "memo": MEMO}
    return await http.post("/api/ledger/gift", json=body, headers=AUTH)


def disk_alerts(col: Collector, reason: str = "disk_full") -> list[dict[str, Any]]:
    return [a for a in col.of_kind("safety/alert") if a["payload"]["reason"] == reason]


async def status_after(col: Collector, nid: str, uptime_s: float) -> dict[str, Any]:
    """The first retained node/status published with an uptime past `uptime_s`."""

    def found(c: Collector) -> dict[str, Any] | None:
        for t, raw in c.messages:
            if t == status_topic(nid):
                doc: dict[str, Any] = json.loads(raw)
                if doc.get("uptime_s", 0.0) > uptime_s:
                    return doc
        return None

    result: dict[str, Any] = await col.wait_for(found, timeout_s=30)
    return result


async def refused_until_full(http: httpx.AsyncClient, acked: list[str]) -> httpx.Response:
    """Gift until the disk refuses one; the acknowledged gifts' hashes go to `acked`."""
    for n in range(10_000):
        r = await gift(http, n)
        if r.status_code != 201:
            return r
        acked.append(r.json()["entry"])
    raise AssertionError("the disk never filled")


async def wait_txn(col: Collector, entry: str) -> None:
    await col.wait_for(lambda c: any(t["payload"]["entry"] == entry for t in c.of_kind("gift/txn")))


async def while_full(node: Node, http: httpx.AsyncClient, col: Collector, acked: list[str]) -> None:
    """What a node whose disk has not a byte left must still do (see the test below)."""
    for n in range(3):
        again = await gift(http, n)
        assert again.status_code == 507 and again.json()["error"], again.text
    assert (await http.get("/api/ledger/balances")).status_code == 200
    listed = await http.get("/api/ledger/entries", params={"type": "gift", "limit": 500})
    assert {e["hash"] for e in listed.json()["entries"]} == set(acked)
    assert (await turn(http, "dream", "visitor-1"))["error"] == ""  # a ritual with no write
    refused = node.disk.refused_total
    await status_after(col, node.node_id, node.uptime + 3 * node.heartbeat_s)
    assert node.disk.refused_total >= refused + 2  # the run record's heartbeats, meanwhile
    assert doctor_line(node.data_dir, "disk writes").startswith("FAIL")


async def test_a_node_on_a_full_disk_says_so_once_serves_reads_and_resumes(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector_factory: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node whose data directory is an 8 MB tmpfs; a filler leaves it a little room, then
    gifts over HTTP until SQLite cannot commit, and the rest is filled to the last byte. Must
    hold: that gift and every later one answers 507 with a JSON error (never a bare 500);
    exactly one safety/alert disk_full; balances and rituals that need no write still answer;
    the retained node/status keeps being republished while the run record's heartbeat is
    refused; `gibsey doctor` has a FAIL line for disk writes; no temp file is left. When the
    fillers are deleted, gifts succeed again by themselves (one disk_recovered alert, and doctor
    shows the episode), `gibsey ledger verify` says ok, and the stored gifts are exactly the
    acknowledged ones."""
    acked: list[str] = []
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        data = disk / "data"
        async with node_on(data, mosquitto) as (node, http):
            nid = node.node_id
            col = await collector_factory(
                mosquitto.port,
                topic(nid, "safety/alert"),
                topic(nid, "gift/txn"),
                status_topic(nid),
            )
            assert node.parts.ledger is not None
            await asyncio.to_thread(node.parts.ledger.mint, "alice", 1000, "0:0")
            fillers = [fill_but(disk, 200 * 1024)]
            refused = await refused_until_full(http, acked)
            assert len(acked) >= 3, "the filler left no room for a single gift"
            fillers.append(fill(disk, "filler-rest"))
            assert refused.status_code == 507, refused.text
            assert "disk" in refused.json()["error"].lower()
            await while_full(node, http, col, acked)
            assert temp_files(disk) == []
            for filler in fillers:
                filler.unlink()
            for n in range(5):
                r = await gift(http, n)
                assert r.status_code == 201, r.text
                acked.append(r.json()["entry"])
            await wait_txn(col, acked[-1])
            assert len(disk_alerts(col)) == 1, disk_alerts(col)
            assert "ENOSPC" in disk_alerts(col)[0]["payload"]["detail"]
            # Said once a write the card keeps succeeds: the batch's commit (due BATCH_IDLE_S
            # after the last gift; the gifts' entry-log appends fit a full disk's last block
            # too, so they do not count) or the run record's heartbeat, whichever is first.
            await col.wait_for(lambda c: disk_alerts(c, "disk_recovered"), 30)
            assert len(disk_alerts(col, "disk_recovered")) == 1
            assert "the last refused writes" in doctor_line(data, "disk writes")
        # Said once in the log too (DiskHealth), not once a batch while the disk was full.
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert len([m for m in said if m.startswith("the disk refuses writes")]) == 1, said
        assert not [m for m in said if "batch could not be committed" in m], said
        verified = ledger_verify(data)
        assert verified.returncode == 0 and verified.stdout.startswith("ok"), verified.stdout
        assert own_entries(data) == set(acked)
        assert temp_files(disk) == []


@contextmanager
def gibsey_up(
    data: Path, broker: Mosquitto, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`gibsey up` on `data` (its log outside it), until its gateway is up: the process and
    the gateway's URL. Killed on the way out if the test did not stop it."""
    (data / "gateway.json").unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", GIBSEY_GATEWAY_TOKEN=TOKEN)
    env.pop("GIBSEY_HTTP", None)
    proc = spawn_up(data, broker.url, "127.0.0.1:0", env=env, log=log)
    try:
        wait_for_file(proc, data / "gateway.json", 60, "gibsey up")
        yield proc, str(json.loads((data / "gateway.json").read_text())["url"])
    finally:
        stop_process(proc, signal.SIGKILL)


async def turn(http: httpx.AsyncClient, rotation: str, actor: str) -> dict[str, Any]:
    """A glyph turn of symbol 0 over HTTP: the ritual/performed it ran."""
    body = {"symbol": 0, "rotation": rotation, "actor": actor}
    r = await http.post("/api/glyph/rotate?wait=true", json=body, headers=AUTH)
    assert r.status_code == 202 and r.json()["ritual"] is not None, r.text
    ritual: dict[str, Any] = r.json()["ritual"]
    return ritual


async def acknowledged_mints(col: Collector, http: httpx.AsyncClient, n: int) -> list[str]:
    """`n` Read turns by alice (each mints her a token): the mints' entries, once announced."""
    for _ in range(n):
        await turn(http, "read", "alice")

    def mints(c: Collector) -> list[str]:
        found = [
            t["payload"]["entry"] for t in c.of_kind("gift/txn") if t["payload"]["type"] == "mint"
        ]
        return found if len(found) >= n else []

    result: list[str] = await col.wait_for(mints)
    return result


async def read_only_episode(
    data: Path, device: str, mosquitto: Mosquitto, col: Collector, log: Path
) -> list[str]:
    """Run a node on `data`, write, make the file system read-only under it, check what it
    answers, stop it: the entries it acknowledged."""
    with gibsey_up(data, mosquitto, log) as (proc, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            acked = await acknowledged_mints(col, http, 6)
            for n in range(3):
                r = await gift(http, n)
                assert r.status_code == 201, r.text
                acked.append(r.json()["entry"])
            fs_error(device)
            for n in range(3):
                r = await gift(http, n)
                assert r.status_code == 507, r.text
                assert "read-only" in r.json()["error"].lower()
            assert (await turn(http, "read", "alice"))["error"] == ""  # the ritual runs
            assert (await http.get("/api/ledger/balances")).status_code == 200
            await col.wait_for(disk_alerts)
            # One more refused write and one more ritual after the alert: still one alert.
            assert (await gift(http, 99)).status_code == 507
            await turn(http, "dream", "visitor-1")
        assert stop_process(proc, signal.SIGINT, 30) == 0, tail(log)
    alerts = disk_alerts(col)
    assert len(alerts) == 1 and "EROFS" in alerts[0]["payload"]["detail"], alerts
    return acked


async def test_a_node_whose_disk_goes_read_only_refuses_writes_and_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, collector_factory: CollectorFactory
) -> None:
    """A `gibsey up` process on an ext4 image mounted errors=remount-ro; turns mint and gifts
    are acknowledged, then the kernel makes the file system read-only after an error
    (trigger_fs_error, as a bad block would). Must hold: gifts answer 507 saying the file system
    is read-only, rituals and reads still answer, exactly one safety/alert disk_full (EROFS),
    and the node stops cleanly (exit 0). After the file system is checked and mounted again
    (what a reboot does), `gibsey ledger verify` says ok, the stored entries of the node's feed
    are exactly the acknowledged ones, and a node started on it takes gifts again."""
    image, log = make_ext4(tmp_path / "ext4.img"), tmp_path / "up.log"
    with ext4(tmp_path / "ext4", image) as device:
        nid = load_or_create(tmp_path / "ext4" / "data").node_id
        col = await collector_factory(
            mosquitto.port, topic(nid, "safety/alert"), topic(nid, "gift/txn")
        )
        acked = await read_only_episode(tmp_path / "ext4" / "data", device, mosquitto, col, log)
    with ext4(tmp_path / "after", rebooted(image)):
        data = tmp_path / "after" / "data"
        verified = ledger_verify(data)
        assert verified.returncode == 0 and verified.stdout.startswith("ok"), verified.stdout
        assert own_entries(data, ("mint", "gift")) == set(acked)
        with gibsey_up(data, mosquitto, log) as (proc, url):
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await gift(http, 1)
                assert r.status_code == 201, r.text
            assert stop_process(proc, signal.SIGINT, 30) == 0
        verified = ledger_verify(data)
        assert verified.returncode == 0 and verified.stdout.startswith("ok"), verified.stdout
