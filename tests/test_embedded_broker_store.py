"""The embedded Mosquitto's store lives in RAM (`make run`'s broker): saved after every change,
in the data directory it was most of what a node wrote to its SD card. What must hold: the store
is in a RAM folder of this user's alone, one per data directory, the same at every start; a
store an older node left in the data directory is carried over; a folder someone else could
write is never used; and a retained message outlives a kill -9 of the broker and a restart of
the node (a real `gibsey up`, its real Mosquitto child)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gibsey.core.mqtt import ClientSettings, Session, new_client_id
from gibsey.harness.nodeproc import children_named, spawn_up, wait_for_file
from gibsey.harness.ports import free_port
from gibsey.harness.turns import node_online
from gibsey.harness.waiting import stop_process, wait_until
from gibsey.node.spine.broker import (
    ORPHAN_AFTER_S,
    OWNER_FILE,
    RAM_FOLDER,
    STORE_FILE,
    broker_store,
    ram_folder,
)

RETAINED_TOPIC = "gallery/wall/retained-note"


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A data directory, and its RAM folder removed afterwards (RAM outlives the test)."""
    folder = tmp_path / "node"
    folder.mkdir()
    yield folder
    shutil.rmtree(ram_folder(folder), ignore_errors=True)
    if ram_folder(folder).is_symlink():
        ram_folder(folder).unlink()


def test_the_store_is_a_ram_folder_of_this_users_own_one_per_data_directory(
    data: Path, tmp_path: Path
) -> None:
    store, why = broker_store(data)
    assert why == ""
    assert store.parent == RAM_FOLDER and store == ram_folder(data)
    info = store.lstat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700
    assert broker_store(data) == (store, "")  # the same at the next start
    other = tmp_path / "other"
    other.mkdir()
    try:
        assert broker_store(other)[0] not in (store, other / "mosquitto")
    finally:
        shutil.rmtree(ram_folder(other), ignore_errors=True)


def test_an_older_nodes_store_in_the_data_directory_is_carried_into_ram(data: Path) -> None:
    old = data / "mosquitto" / STORE_FILE
    old.parent.mkdir()
    old.write_bytes(b"retained messages of an older node")
    store, _ = broker_store(data)
    assert (store / STORE_FILE).read_bytes() == b"retained messages of an older node"
    assert not old.exists()
    # Once RAM holds one, a store left on the disk is the older: it goes.
    old.write_bytes(b"stale")
    broker_store(data)
    assert not old.exists()
    assert (store / STORE_FILE).read_bytes() == b"retained messages of an older node"


def test_a_ram_folder_another_could_write_is_not_used(data: Path, tmp_path: Path) -> None:
    """Another user of the machine may make the name first: a link, or a folder open to all."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ram_folder(data).symlink_to(elsewhere)
    store, why = broker_store(data)
    assert store == data / "mosquitto" and "not a folder of this user's alone" in why
    ram_folder(data).unlink()
    ram_folder(data).mkdir(mode=0o700)
    ram_folder(data).chmod(0o777)
    store, why = broker_store(data)
    assert store == data / "mosquitto" and "not a folder of this user's alone" in why


def test_the_stores_of_data_directories_gone_for_a_day_are_freed(
    data: Path, tmp_path: Path
) -> None:
    """RAM is the machine's: a store whose data directory was deleted (a test's, a node
    removed) is freed at the next start of any node, once no broker saved to it for a day."""
    kept, gone_recently, gone = (tmp_path / name for name in ("kept", "recent", "gone"))
    folders = []
    for node in (kept, gone_recently, gone):
        node.mkdir()
        folder, _ = broker_store(node)
        (folder / STORE_FILE).write_bytes(b"retained")
        folders.append(folder)
    day_ago = time.time() - ORPHAN_AFTER_S - 60
    for folder in (folders[0], folders[2]):
        for path in (*folder.iterdir(), folder):
            os.utime(path, (day_ago, day_ago))
    gone_recently.rmdir()
    gone.rmdir()
    try:
        broker_store(data)
        assert folders[0].exists()  # its data directory is there, however old the store
        assert folders[1].exists()  # gone, but saved to within the day (a node we cannot see)
        assert not folders[2].exists()
        assert (ram_folder(data) / OWNER_FILE).read_text() == f"{data.resolve()}\n"
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def test_without_a_ram_filesystem_the_store_stays_in_the_data_directory(
    data: Path, tmp_path: Path
) -> None:
    store, why = broker_store(data, ram=tmp_path)
    assert store == data / "mosquitto" and "not a RAM filesystem" in why


@asynccontextmanager
async def _up(data: Path, log: Path, **env: str) -> AsyncIterator[tuple[int, str, str]]:
    """`gibsey up` on its embedded Mosquitto (a free port) until stopped cleanly; yields its
    pid, broker URL and node id once it is online."""
    port = free_port()
    environ = dict(os.environ, GIBSEY_EMBEDDED_PORT=str(port), GIBSEY_DISCOVERY_PREFIX="", **env)
    environ.pop("GIBSEY_BROKER", None)
    proc = spawn_up(data, "", "off", env=environ, log=log)
    try:
        await asyncio.to_thread(wait_for_file, proc, data / "node_id", 60, "gibsey up")
        node_id = (data / "node_id").read_text().strip()
        url = f"mqtt://127.0.0.1:{port}"
        await node_online(url, node_id, connects=1, timeout_s=30)
        yield proc.pid, url, node_id
    finally:
        stop_process(proc, signal.SIGINT, 30)


async def _retained(url: str) -> bytes:
    """What the broker holds retained on RETAINED_TOPIC, read by a new client."""
    settings = ClientSettings(url, new_client_id("store-reader"), connect_timeout_s=5.0)
    async with Session(settings) as session:
        await session.subscribe(RETAINED_TOPIC, qos=1)
        async with asyncio.timeout(10):
            async for message in session.messages():
                return message.payload
    raise AssertionError("no retained message")


async def test_a_retained_message_outlives_a_killed_broker_and_a_restarted_node(
    data: Path, tmp_path: Path
) -> None:
    log = tmp_path / "up.log"
    store = ram_folder(data)
    async with _up(data, log) as (pid, url, _node_id):
        settings = ClientSettings(url, new_client_id("store-writer"), connect_timeout_s=5.0)
        async with Session(settings) as session:
            await session.publish(RETAINED_TOPIC, b"the wall is blue", qos=1, retain=True)
        # Saved after every change: the store is written, in RAM, none of it on the disk.
        await asyncio.to_thread(wait_until, (store / STORE_FILE).exists, 10, "the store saved")
        assert not (data / "mosquitto" / STORE_FILE).exists()
        (broker,) = children_named(pid, "mosquitto")
        os.kill(broker, signal.SIGKILL)
        await asyncio.to_thread(
            wait_until,
            lambda: children_named(pid, "mosquitto") not in ([], [broker]),
            15,
            "a new Mosquitto",
        )
        await node_online(url, _node_id, connects=2, timeout_s=30)
        assert await _retained(url) == b"the wall is blue"
    async with _up(data, log) as (_pid, url, _node_id):
        assert await _retained(url) == b"the wall is blue"
    assert f"store in {store}" in log.read_text()


async def test_a_store_asked_for_in_the_data_directory_is_kept_there(
    data: Path, tmp_path: Path
) -> None:
    async with _up(data, tmp_path / "up.log", GIBSEY_EMBEDDED_BROKER_STORE="data") as up:
        settings = ClientSettings(up[1], new_client_id("store-writer"), connect_timeout_s=5.0)
        async with Session(settings) as session:
            await session.publish(RETAINED_TOPIC, b"kept on the card", qos=1, retain=True)
        on_disk = data / "mosquitto" / STORE_FILE
        await asyncio.to_thread(wait_until, on_disk.exists, 10, "the store saved in the data dir")
    assert not ram_folder(data).exists()
