"""The mesh between real `gibsey mesh serve` processes on loopback, with CurveZMQ and real keys."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from nacl.signing import SigningKey

from gibsey.core.identity import load_or_create
from gibsey.harness.gallery import GalleryError
from gibsey.ledger.entry import create
from gibsey.ledger.store import Store
from gibsey.ledger.testing import FeedWriter, forge
from gibsey.mesh import wire
from gibsey.mesh.config import curve_keypair, curve_public
from tests.brokers import free_port
from tests.mesh_support import (
    REPO,
    MeshProc,
    append_mints,
    balances,
    converged,
    fork_count,
    heads,
    make_nodes,
    wait_until,
)

ROGUE_SEED = b"\x07" * 32
# A member of the gallery that equivocates: the mesh holds only feeds of allow-listed keys, so
# its key is on the lists (a stranger's feed is refused before any fork could be seen).
EQUIVOCATOR_SEED = b"\x0b" * 32


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[MeshProc]]:
    extra = [SigningKey(s).verify_key.encode().hex() for s in (ROGUE_SEED, EQUIVOCATOR_SEED)]
    nodes = make_nodes(
        tmp_path, ["127.0.0.1"] * 3, [free_port() for _ in range(3)], allow_extra=extra
    )
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _gift(data: Path, giver: str, receiver: str, amount: int) -> None:
    key = load_or_create(data).signing_key
    store = Store.open(data)
    try:
        store.append(key, "gift", {"from": giver, "to": receiver, "amount": amount})
    finally:
        store.close()


def test_three_processes_converge_to_identical_feeds_and_balances(trio: list[MeshProc]) -> None:
    a, b, c = trio
    append_mints(a.data, 5, "london-fox")
    append_mints(b.data, 3, "glyph-marrow")
    append_mints(c.data, 4, "old-natalie")
    wait_until(lambda: converged(trio) and len(heads(a.data)) == 3, 20, "first convergence")
    _gift(a.data, "london-fox", "glyph-marrow", 2)
    # CLI process appends while the mesh serves the same data directory: picked up and pushed.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gibsey",
            "--data",
            str(c.data),
            "ledger",
            "mint",
            "princhetta",
            "7",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # Each feed also starts with its node's `members` entry (its gallery, recorded at start).
    expect = {a.key: 7, b.key: 4, c.key: 6}
    wait_until(lambda: converged(trio, expect), 20, "convergence after the gift")
    views = [balances(n.data) for n in trio]
    assert views[0] == views[1] == views[2]
    assert views[0]["princhetta"] == 7 and views[0]["old-natalie"] == 4
    for n in trio:
        assert Store.open(n.data).verify().ok
    wait_until(lambda: all(a.peer_state(o.key) == "up" for o in (b, c)), 10, "peers up")
    st = subprocess.run(
        [sys.executable, "-m", "gibsey", "--data", str(a.data), "mesh", "status"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert st.returncode == 0 and "mesh running" in st.stdout, st.stdout + st.stderr
    assert b.key[:16] in st.stdout and "up" in st.stdout


def _dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], key: SigningKey, server: str, endpoint: str
) -> zmq.Socket[bytes]:
    secret, public = curve_keypair(key)
    s = ctx.socket(zmq.DEALER)
    s.curve_secretkey = secret
    s.curve_publickey = public
    s.curve_serverkey = curve_public(bytes.fromhex(server))
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _recv_all(s: zmq.Socket[bytes], timeout: float) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if s.poll(int(left * 1000)):
            msg = s.recv_multipart()
            out.append(msg)
            if msg[0] == wire.HEADS:
                break
    return out


def _sync_frames() -> list[bytes]:
    return [wire.SYNC, b"", b"", b""]


def test_unknown_key_can_neither_read_nor_write(trio: list[MeshProc]) -> None:
    a = trio[0]
    append_mints(a.data, 2)
    stranger = SigningKey(b"\x09" * 32)  # not on anyone's allow-list
    writer = FeedWriter(b"\x09" * 32)
    entry = writer.next("mint", {"actor": "cop-e-right", "amount": 100, "ritual": "read"})
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        s = _dealer(ctx, stranger, a.key, a.endpoint)
        s.send_multipart(_sync_frames())  # queued locally; the handshake is refused
        s.send_multipart([wire.ENTRIES, entry.raw])
        assert _recv_all(s, 1.5) == []  # nothing served
        wait_until(lambda: a.status().get("stats", {}).get("refused", 0) > 0, 5, "refusal")
    finally:
        ctx.destroy(linger=0)
    assert writer.author.hex() not in heads(a.data)
    assert "refused a connection from unknown key" in a.log()


def test_forged_replayed_and_equivocating_data(trio: list[MeshProc]) -> None:
    a, b, _ = trio
    append_mints(a.data, 3)
    wait_until(lambda: converged(trio), 20, "convergence")
    rogue = SigningKey(ROGUE_SEED)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        s = _dealer(ctx, rogue, a.key, a.endpoint)
        s.send_multipart(_sync_frames())
        replies = _recv_all(s, 10)
        assert replies and replies[-1][0] == wire.HEADS  # an allow-listed peer is served
        old = [f for m in replies if m[0] == wire.ENTRIES for f in m[1:]]
        assert sum(f.startswith(b'{"author":"' + a.key.encode()) for f in old) == 4  # list, 3 mints
        # A replayed old batch: duplicates, nothing changes, no strike.
        s.send_multipart([wire.ENTRIES, *old])
        # An equivocating author: two different entries at seq 1 of one feed.
        x = SigningKey(EQUIVOCATOR_SEED)
        for amount in (5, 50):
            body = {"actor": "todd-fishbone", "amount": amount, "ritual": "read"}
            e = create(x, seq=1, prev=None, lamport=10, type_="mint", body=body)
            s.send_multipart([wire.ENTRIES, e.raw])
        wait_until(lambda: all(fork_count(n.data) == 1 for n in trio), 20, "fork proof everywhere")
        assert a.status()["peers"] and all(
            p["strikes"] == 0
            for p in a.status()["peers"]
            if p["key"] == rogue.verify_key.encode().hex()
        )
        # Forged entries: a bad signature, then malformed ones: strikes, then dropped.
        good = create(
            rogue,
            seq=1,
            prev=None,
            lamport=20,
            type_="mint",
            body={"actor": "cop-e-right", "amount": 9, "ritual": "read"},
        )
        bad_sig = good.raw[:-64] + bytes(64)
        s.send_multipart([wire.ENTRIES, bad_sig])
        payload = {
            "author": rogue.verify_key.encode().hex(),
            "body": {"x": 1},
            "lamport": 1,
            "prev": None,
            "seq": 1,
            "type": "mint",
            "v": 1,
            "wall": 0,
        }
        for _ in range(4):
            time.sleep(1.1)  # past the penalty rate (1 message/s), so each one is judged
            s.send_multipart([wire.ENTRIES, forge(rogue, payload)])
        rk = rogue.verify_key.encode().hex()
        wait_until(lambda: a.peer_state(rk) == "banned", 10, "rogue banned")
        # Dropped: even a valid entry from it is ignored now.
        s.send_multipart([wire.ENTRIES, good.raw])
    finally:
        ctx.destroy(linger=0)
    # Everyone else is still served: a new entry on b reaches a and c.
    append_mints(b.data, 2, "arieol-owlist")
    try:
        wait_until(lambda: converged(trio) and heads(a.data).get(b.key) == 3, 20, "serving")
    except GalleryError:  # wait_until's timeout: say where things stand
        print([heads(n.data) for n in trio], a.log(), b.log(), sep="\n")
        raise
    hs = heads(a.data)
    assert rogue.verify_key.encode().hex() not in hs
    views = [balances(n.data) for n in trio]
    assert views[0] == views[1] == views[2]
    assert "todd-fishbone" not in views[0]  # the equivocating author is quarantined
    assert "cop-e-right" not in views[0]
    assert "banned" in a.log()


def test_sync_cli_moves_entries_both_ways(tmp_path: Path) -> None:
    lone = tmp_path / "lone"
    lone_key = load_or_create(lone).public_hex
    [server] = make_nodes(tmp_path / "s", ["127.0.0.1"], [free_port()], allow_extra=[lone_key])
    server.start()
    try:
        append_mints(server.data, 4)
        append_mints(lone, 2, "jack-parlance")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gibsey",
                "--data",
                str(lone),
                "mesh",
                "sync",
                f"{server.key}@{server.endpoint}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "received 5 entries, sent 2" in out.stdout  # the server's list and 4 mints
        wait_until(lambda: heads(server.data) == heads(lone), 10, "server has the pushed feed")
    finally:
        server.stop()
