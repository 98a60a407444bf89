"""A node whose entry log comes back damaged or cut short holds its own feed until its peers
have shown how far they hold it (ledger/ownfeed.py).

The entry log keeps the last acknowledged groups until SQLite commits them, and the mesh has
pushed each to the peers since its acknowledgment. A card that loses such a group (a page it
damaged when the power went during the next write) looks like a write a power cut tore; a node
that signed on from what it still held signed a second entry at a seq its peers hold: a fork,
and its feed counted nowhere from there on. Real parts: two `gibsey mesh serve` processes over
ZeroMQ, the CLI, a writer killed before its batch commits; the card's damage is one flipped
byte of the log (the one stand-in)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.core.datalock import DataDirLock
from gibsey.core.identity import load_or_create
from gibsey.harness.ports import free_port
from gibsey.ledger.entrylog import SUFFIX
from gibsey.ledger.ownfeed import HOLD_FILENAME
from gibsey.ledger.store import DB_FILENAME, Store
from gibsey.node.config import load_gibsey_config
from gibsey.node.daemon import Node
from gibsey.node.doctor import FAIL, check_ledger
from tests.conftest import CollectorFactory
from tests.mesh_support import MeshProc, heads, make_nodes, wait_until
from tests.test_cli_output import gibsey

GROUP = 3
# Signs one entry and commits it (the own feed's mark takes it at once), then acknowledges a
# group of GROUP in the entry log and dies before the batch commits, as kill -9 would.
WRITER = """
import json, os, sys
from pathlib import Path
from gibsey.core.identity import load_or_create
from gibsey.ledger.store import Store
data = Path(sys.argv[1])
key = load_or_create(data).signing_key
mint = {"actor": "visitor:7", "amount": 1, "ritual": "dial"}
store = Store.open(data, commit_every_s=30)
first = store.append(key, "mint", mint)
store.commit()
group = store.append_many(key, [("mint", mint)] * int(sys.argv[2]))
print(json.dumps([e.raw.hex() for e in [first, *group]]), flush=True)
os._exit(0)
"""


def _acknowledged_group(data: Path) -> list[bytes]:
    """The writer's entries: one committed, then a group acknowledged (fdatasynced in the
    entry log), never committed."""
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(data), str(GROUP)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    group = [bytes.fromhex(h) for h in json.loads(done.stdout.strip().splitlines()[-1])]
    assert len(group) == 1 + GROUP and (data / (DB_FILENAME + SUFFIX)).stat().st_size > 0
    return group


def _damage_the_log(data: Path) -> None:
    """The card's damage: one bit of the last record's entry bytes (its crc catches it)."""
    log_path = data / (DB_FILENAME + SUFFIX)
    damaged = bytearray(log_path.read_bytes())
    last = damaged.rstrip(b"\0")
    damaged[len(last) - 20] ^= 1
    log_path.write_bytes(bytes(damaged))


def _pushed(data: Path, group: list[bytes]) -> None:
    """What the mesh did at the group's acknowledgment: the peer holds it."""
    store = Store.open(data)
    try:
        store.import_many(group)
    finally:
        store.close()


def _own_seq(node: MeshProc) -> int:
    return heads(node.data).get(node.key, 0)


def _mint(data: Path) -> subprocess.CompletedProcess[bytes]:
    return gibsey(data, "ledger", "mint", "visitor:9", "1")


def test_a_damaged_log_holds_the_feed_until_the_peer_brings_back_what_it_lost(
    tmp_path: Path,
) -> None:
    a, b = make_nodes(tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()])
    try:
        a.start(timeout=60)
        b.start(timeout=60)
        wait_until(lambda: heads(a.data) == heads(b.data) != {}, 60, "the members entries")
        a.stop()
        _pushed(b.data, _acknowledged_group(a.data))
        b.stop()  # the peer that holds the group is away when a comes back
        lost_from = _own_seq(a) + 1
        assert heads(b.data)[a.key] == lost_from + GROUP - 1
        _damage_the_log(a.data)

        refused = _mint(a.data)  # no entry signed at the seqs b holds
        assert refused.returncode == 1, refused.stdout
        said = refused.stderr.decode()  # one line, as written: "[mesh]" is no markup
        assert "own feed is held" in said and HOLD_FILENAME in said, said
        assert "or after [mesh] own_feed_confirm_s;" in said, said
        assert _own_seq(a) == lost_from - 1
        assert (a.data / HOLD_FILENAME).exists()
        status = gibsey(a.data, "mesh", "status").stdout.decode()  # said before the peers
        assert "own feed HELD until the peers show how far they hold it: at " in status, status

        a.start(timeout=60)
        b.start(timeout=60)
        wait_until(lambda: not (a.data / HOLD_FILENAME).exists(), 60, "a signing on")
        assert _own_seq(a) == lost_from + GROUP - 1  # the lost group came back from b
        assert "signed on again: the gallery's 1 peer(s) hold no more of it" in a.log()
        done = _mint(a.data)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"seq {lost_from + GROUP}" in done.stdout.decode()
        wait_until(lambda: heads(b.data)[a.key] == lost_from + GROUP, 30, "b taking a's new entry")
    finally:
        a.stop()
        b.stop()
    for node in (a, b):
        assert heads(node.data, trusted=False) == heads(node.data)  # no fork proof anywhere
        checked = gibsey(node.data, "ledger", "verify")
        assert checked.returncode == 0, checked.stdout


def test_with_no_peer_answering_the_feed_is_signed_on_after_the_bound(tmp_path: Path) -> None:
    a, b = make_nodes(
        tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()], mesh={"own_feed_confirm_s": 1}
    )
    _acknowledged_group(a.data)
    _damage_the_log(a.data)
    assert _mint(a.data).returncode == 1
    try:
        a.start(timeout=60)  # b never starts
        wait_until(lambda: not (a.data / HOLD_FILENAME).exists(), 60, "a signing on")
    finally:
        a.stop()
    said = a.log()
    unheard = "1 of 1 peer(s) did not show how far they hold this node's feed within 1 s"
    assert f"{unheard} ({b.key[:16]})" in said
    assert "signed on again: [mesh] own_feed_confirm_s (1 s) passed" in said
    assert _mint(a.data).returncode == 0


@pytest.mark.parametrize("tear", [False, True], ids=["damaged", "cut short"])
def test_a_node_without_a_mesh_signs_on_at_its_start(
    tmp_path: Path, tear: bool, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "node"
    load_or_create(data)
    _acknowledged_group(data)
    log_path = data / (DB_FILENAME + SUFFIX)
    if tear:  # a power cut during the last append: its last record cut short
        log_path.write_bytes(log_path.read_bytes().rstrip(b"\0")[:-25])
    else:
        _damage_the_log(data)
    assert _mint(data).returncode == 1
    assert (data / HOLD_FILENAME).exists()
    said = check_ledger(data)  # what `gibsey doctor` says of it: the group set aside, held
    assert said.status == FAIL and "this node's own feed is held (at " in said.detail, said
    assert "not stored: entries the entry log held are not in the ledger: " in said.detail, said
    with caplog.at_level(logging.WARNING, logger="gibsey.ledger"):
        node = Node(data, load_gibsey_config(data))
        for close in node._closers:
            close()
    assert "signed on again: this node has no mesh, so no peer holds its feed" in caplog.text
    assert not (data / HOLD_FILENAME).exists()
    done = _mint(data)
    assert done.returncode == 0, done.stdout + done.stderr
    # The group's whole records wait for the head the card lost: set aside, never signed over.
    assert "seq 2" in done.stdout.decode()


def test_a_whole_log_holds_nothing(tmp_path: Path) -> None:
    data = tmp_path / "node"
    load_or_create(data)
    _acknowledged_group(data)  # left by a killed writer, every record whole
    done = _mint(data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"seq {2 + GROUP}" in done.stdout.decode()
    assert not (data / HOLD_FILENAME).exists()


# A node's run that signs one entry (marked at once, as a process's first signature is), is
# backed up, signs GROUP more in the same minute (not marked yet: ledger/ownfeed.py), and dies
# as kill -9 leaves it: its run record unclean, its ledger not closed.
DYING_RUN = """
import json, os, shutil, sys
from pathlib import Path
from gibsey.core.identity import load_or_create
from gibsey.ledger.store import Store
from gibsey.node.watchdog.rebirth import RunRecord
data, backup = Path(sys.argv[1]), Path(sys.argv[2])
RunRecord(data).begin()
key = load_or_create(data).signing_key
mint = {"actor": "visitor:7", "amount": 1, "ritual": "dial"}
store = Store.open(data)
first = store.append(key, "mint", mint)
store.commit()
backup.mkdir()
for path in data.glob("ledger.sqlite3*"):
    shutil.copy2(path, backup / path.name)
later = store.append_many(key, [("mint", mint)] * int(sys.argv[3]))
store.commit()
print(json.dumps([e.raw.hex() for e in [first, *later]]), flush=True)
os._exit(0)
"""


def _signed_by(script: str, data: Path, backup: Path) -> list[bytes]:
    """The entries a run `script` (DYING_RUN, CLEAN_RUNS) signed on `data`, backing it up to
    `backup` on its way: all pushed to the peers as they were acknowledged."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(data), str(backup), str(GROUP)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [bytes.fromhex(h) for h in json.loads(done.stdout.strip().splitlines()[-1])]


def _dying_run(data: Path, backup: Path) -> list[bytes]:
    return _signed_by(DYING_RUN, data, backup)


async def test_a_backup_of_the_last_minute_restored_after_a_death_does_not_fork_the_feed(
    tmp_path: Path,
) -> None:
    """Tried (an outside tester): a node's ledger copied while it ran, 6 visitors' mints
    signed and pushed to the peers, kill -9, the copy restored (with node.key, as CANONICAL.md
    says), `gibsey up`: the node signed its death record at the copy's next seq at once, before
    the mesh brought back what it had signed after the copy (own-feed.json lags by up to a
    minute, so the copy looked whole). A fork: the 6 mints counted nowhere, and the node could
    sign nothing more. Must hold: after a run that died, `gibsey up` with a mesh holds its
    feed until the peer has shown how far it holds it; the lost entries come back, and the
    death is recorded after them."""
    from gibsey.node.config import GibseyConfig
    from tests.brokers import Mosquitto
    from tests.conftest import started

    a, b = make_nodes(tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()])
    backup = tmp_path / "backup"
    signed = _dying_run(a.data, backup)
    _pushed(b.data, signed)  # the mesh pushed each at its acknowledgment
    for path in a.data.glob("ledger.sqlite3*"):
        path.unlink()
    for path in backup.iterdir():  # the technician's restore
        (a.data / path.name).write_bytes(path.read_bytes())
    restored = _own_seq(a)
    assert restored == 1 and heads(b.data)[a.key] == 1 + GROUP
    broker = Mosquitto(tmp_path / "mosquitto").start()
    b.start(timeout=60)
    try:
        node = Node(a.data, load_gibsey_config(a.data))
        assert isinstance(node.config, GibseyConfig) and (a.data / HOLD_FILENAME).exists()
        async with started(node, broker.url):
            await asyncio.to_thread(
                wait_until, lambda: not (a.data / HOLD_FILENAME).exists(), 60, "a signing on"
            )
            # The death, recorded once the feed is signed on: after the entries b brought back.
            await asyncio.to_thread(
                wait_until, lambda: _own_seq(a) == 3 + GROUP, 30, "the death recorded"
            )
    finally:
        b.stop()
        broker.stop()
    ledger = Store.open(a.data)
    try:
        types = [e.type for e in ledger.iter_ordered() if e.author.hex() == a.key]
    finally:
        ledger.close()
    # Signed on after what b brought back: the gallery's members, and the death.
    assert types == ["mint"] * (1 + GROUP) + ["members", "rebirth"], types
    for node_data in (a.data, b.data):
        assert heads(node_data, trusted=False) == heads(node_data)  # no fork proof anywhere


async def test_turns_while_the_feed_waits_are_one_alert_not_one_each(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    """While the own feed waits for its peers after a death (here a peer that never answers),
    every turn's mint is refused alike. Must hold: the turns are performed, their mints are
    counted (`gibsey_ritual_writes_waited`), and said in one `own_feed_waits` alert for the
    interval, not a `mint_refused` alert each (a busy dial's minute of them)."""
    from tests.brokers import Mosquitto
    from tests.conftest import started
    from tests.events import raw_event, topic

    a, _b = make_nodes(
        tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()], mesh={"own_feed_confirm_s": 300}
    )
    _dying_run(a.data, tmp_path / "backup")  # a run that died: the start holds the feed
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        node = Node(a.data, load_gibsey_config(a.data))
        nid = node.node_id
        col = await collector_factory(
            broker.port, topic(nid, "safety/alert"), topic(nid, "ritual/performed")
        )
        async with started(node, broker.url):
            for n in range(5):
                turn = raw_event(nid, "glyph/rotated", {"symbol": 2, "rotation": 1}, actor=f"v{n}")
                await col.publish(topic(nid, "glyph/rotated"), turn)
            await col.wait_for(lambda c: len(c.of_kind("ritual/performed")) == 5)
            glyph = node.parts.glyph
            assert glyph is not None
            await asyncio.to_thread(wait_until, lambda: glyph.feed_waits.total == 5, 30, "mints")
            assert (a.data / HOLD_FILENAME).exists()
    finally:
        broker.stop()
    reasons = [e["payload"]["reason"] for e in col.of_kind("safety/alert")]
    assert reasons.count("own_feed_waits") == 1 and "mint_refused" not in reasons, reasons
    said = next(
        e for e in col.of_kind("safety/alert") if e["payload"]["reason"] == "own_feed_waits"
    )
    assert said["payload"]["detail"].startswith("1 mints refused (1 in all)")


def test_a_cli_write_after_a_death_waits_for_the_node_and_its_peers(tmp_path: Path) -> None:
    """Tried (an outside tester): after a kill -9 and a restored backup, `gibsey ledger mint`
    run before `gibsey up` signed at once, over entries the peers held: a fork, 20
    acknowledged mints lost. Must hold: with no node running there and a [mesh] configured, a
    CLI write after a run that died holds the feed as `gibsey up` does, and is refused saying
    why; nothing is signed."""
    a, _b = make_nodes(tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()])
    _dying_run(a.data, tmp_path / "backup")
    signed = _own_seq(a)
    refused = _mint(a.data)
    assert refused.returncode == 1
    said = refused.stderr.decode()
    assert "own feed is held (at " in said, said
    assert (
        "the last run had not stopped cleanly (killed, crashed, a power cut): the entries" in said
    )
    assert (a.data / HOLD_FILENAME).exists() and _own_seq(a) == signed


# A node's clean run: one entry signed, the run stopped cleanly and the whole data directory
# backed up (own-feed.json and run.json with it), then a second clean run that signs GROUP more.
CLEAN_RUNS = """
import json, shutil, sys
from pathlib import Path
from gibsey.core.identity import load_or_create
from gibsey.ledger.store import Store
from gibsey.node.watchdog.rebirth import RunRecord
data, backup = Path(sys.argv[1]), Path(sys.argv[2])
key = load_or_create(data).signing_key
mint = {"actor": "visitor:7", "amount": 1, "ritual": "dial"}
signed = []
for n in (1, int(sys.argv[3])):
    run = RunRecord(data)
    run.begin()
    store = Store.open(data)
    signed += store.append_many(key, [("mint", mint)] * n)
    store.close()
    run.end()
    if not backup.exists():
        shutil.copytree(data, backup)
print(json.dumps([e.raw.hex() for e in signed]), flush=True)
"""


async def test_a_whole_backup_restored_and_held_does_not_fork_the_feed(tmp_path: Path) -> None:
    """Tried (an outside tester): the whole data directory backed up at a clean stop, the node
    ran on and signed 6 mints its peer holds, the backup restored. Nothing on the card tells a
    restore from a clean stop, so `gibsey up` signed at once over the peer's copy: a fork. The
    technician's way out (README, CANONICAL.md section 3): `gibsey ledger hold` after the
    restore. Must hold: refused while a node runs there or without a mesh; with it, `gibsey up`
    signs nothing until the peer brought back the 6 mints, and signs after them: no fork."""
    from tests.brokers import Mosquitto
    from tests.conftest import started

    a, b = make_nodes(tmp_path, ["127.0.0.1"] * 2, [free_port(), free_port()])
    backup = tmp_path / "backup"
    signed = _signed_by(CLEAN_RUNS, a.data, backup)
    _pushed(b.data, signed)  # the mesh pushed each at its acknowledgment
    shutil.rmtree(a.data)
    shutil.copytree(backup, a.data)  # the technician's restore, whole
    assert _own_seq(a) == 1 and heads(b.data)[a.key] == 1 + GROUP
    held = gibsey(a.data, "ledger", "hold")
    assert held.returncode == 0, held.stderr
    assert "own feed is held" in held.stdout.decode() and (a.data / HOLD_FILENAME).exists()
    lock = DataDirLock(a.data).acquire()  # as `gibsey up` takes it (node/cli.py)
    broker = Mosquitto(tmp_path / "mosquitto").start()
    b.start(timeout=60)
    try:
        node = Node(a.data, load_gibsey_config(a.data))
        async with started(node, broker.url):
            refused = await asyncio.to_thread(gibsey, a.data, "ledger", "hold")
            assert refused.returncode == 1 and b"a node runs on" in refused.stderr
            await asyncio.to_thread(
                wait_until, lambda: not (a.data / HOLD_FILENAME).exists(), 60, "a signing on"
            )
            await asyncio.to_thread(
                wait_until, lambda: _own_seq(a) == 2 + GROUP, 30, "the members recorded"
            )
    finally:
        lock.release()
        b.stop()
        broker.stop()
    for node_data in (a.data, b.data):
        assert heads(node_data, trusted=False) == heads(node_data)  # no fork proof anywhere
    (a.data / "gibsey.toml").write_text("")
    alone = gibsey(a.data, "ledger", "hold")
    assert alone.returncode == 1 and b"has no [mesh]" in alone.stderr


def test_out_of_descriptors_no_hold_is_read_as_a_hold(tmp_path: Path) -> None:
    """Tried (an outside tester): the node out of file descriptors (a flood of connections)
    read the hold file's absence as a hold (`unreadable`), which its mesh then lifted, once a
    second, logging "signed on again" with nothing held. Must hold: with no hold file, none is
    seen without a descriptor to spare; with one, the hold stands (its reason unreadable)."""
    script = (
        "import json, os, resource, sys\n"
        "from pathlib import Path\n"
        "from gibsey.ledger.ownfeed import OwnFeedMark\n"
        "mark = OwnFeedMark(Path(sys.argv[1]))\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "used = len(os.listdir('/proc/self/fd')) - 1\n"  # listdir's own descriptor
        "resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))\n"
        "print(json.dumps(mark.held()))\n"
    )
    for hold in (False, True):
        if hold:
            (tmp_path / HOLD_FILENAME).write_text("a damaged entry log\n")
        argv = [sys.executable, "-c", script, str(tmp_path)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        said = json.loads(done.stdout.strip().splitlines()[-1])
        if hold:
            assert "is unreadable ([Errno 24] Too many open files" in said, said
        else:
            assert said == "", said
