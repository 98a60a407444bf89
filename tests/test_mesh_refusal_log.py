"""What the mesh refuses is said in the log, paced (an outside tester's find: garbage on the mesh
port said nothing, and each connection of an unknown key said a line, so a stranger reconnecting
in a loop filled the journal on a node's SD card).

What is tried: a real MeshNode (real ZeroMQ, CurveZMQ with real keys, on loopback) is sent, from
real sockets, bytes that are no ZMTP greeting, a ZeroMQ handshake without CurveZMQ, fifty
handshakes of a key not on its allow-list, and malformed messages from an allow-listed key until
it is banned. What must hold: each kind is said at once the first time, then not again until its
interval has passed, when one line gives how many more came; the mesh's status counts each.

The interval is passed by moving the node's injected refusal clock, never by sleeping: each
wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path

import pytest
import zmq
from nacl.signing import SigningKey

from gibsey.harness.waiting import until
from gibsey.ledger.store import Store
from gibsey.mesh import wire
from gibsey.mesh.config import PeerSpec, curve_keypair, curve_public
from gibsey.mesh.node import REFUSAL_LOG_S, MeshNode, Refusal, Stats
from gibsey.node.gateway.metrics import mesh_refusals
from tests.mesh_support import quick_mesh_config

pytestmark = pytest.mark.timeout(60)

NODE = SigningKey(bytes([0x60]) * 32)
MEMBER = SigningKey(bytes([0x61]) * 32)  # on the node's allow-list
STRANGER = SigningKey(bytes([0x62]) * 32)  # on no list
WAIT_S = 15.0
FLOOD = 1500  # stray connections: two monitor events each, past its queue of about a thousand
GARBAGE = b"GET / HTTP/1.1\r\nHost: gallery\r\n\r\n"  # a browser pointed at the mesh port


class Clock:
    """The node's refusal clock: stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(tmp: Path) -> AsyncIterator[tuple[MeshNode, Clock]]:
    """A listening node allowing MEMBER, dialing no one, its refusal clock held by the test."""
    clock = Clock()
    store = Store.open(tmp / "node")
    cfg = quick_mesh_config([], {MEMBER.verify_key.encode()})
    node = MeshNode(store, NODE, cfg, refusal_clock=clock)
    await node.start()
    try:
        yield node, clock
    finally:
        await node.stop()
        store.close()


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """The outsiders' own ZeroMQ context (not the node's), destroyed after the test."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def said(caplog: pytest.LogCaptureFixture, kind: Refusal) -> list[str]:
    return [r.getMessage() for r in caplog.records if kind.value in r.getMessage()]


def port_of(node: MeshNode) -> int:
    return int(node.endpoint.rsplit(":", 1)[1])


def send_raw(port: int, data: bytes) -> None:
    """A plain TCP client: connect, send `data`, hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)


def dealer(
    ctx: zmq.Context[zmq.Socket[bytes]],
    node: MeshNode,
    key: SigningKey | None,
    source: str = "127.0.0.1",
) -> zmq.Socket[bytes]:
    """A DEALER dialing the node once (no reconnection) from `source` (127/8 is loopback): with
    CurveZMQ as `key`, or without."""
    s = ctx.socket(zmq.DEALER)
    if key is not None:
        secret, public = curve_keypair(key)
        s.curve_secretkey = secret
        s.curve_publickey = public
        s.curve_serverkey = curve_public(node.me)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, -1)  # one connection each: the count is the test's own
    s.connect(f"tcp://{source}:0;{node.endpoint.removeprefix('tcp://')}")
    return s


def test_every_refusal_kind_has_its_counter_in_the_status() -> None:
    counters = {f.name for f in fields(Stats)}
    assert {kind.name.lower() for kind in Refusal} <= counters


def test_the_gateway_documents_every_mesh_counter() -> None:
    """/api/mesh/peers answers the mesh's counters through a model that names each (its
    OpenAPI schema): one missing there would make the route answer 500."""
    from gibsey.node.gateway.responses import MeshCounters

    assert list(MeshCounters.model_fields) == [f.name for f in fields(Stats)]


async def test_garbage_on_the_mesh_port_is_said_at_once_then_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: a browser's request to the mesh port, then four more. Must hold: the first is
    said at once, naming the port; the next four only as one line, once the interval passed."""
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    async with running(tmp_path) as (node, clock):
        send_raw(port_of(node), GARBAGE)
        first = await until(lambda: said(caplog, Refusal.NO_HANDSHAKE), WAIT_S, "the garbage said")
        assert len(first) == 1 and node.endpoint in first[0], first
        for _ in range(4):
            send_raw(port_of(node), GARBAGE)
        await until(lambda: node.stats.no_handshake == 5, WAIT_S, "five garbage connections seen")
        assert len(said(caplog, Refusal.NO_HANDSHAKE)) == 1  # held back: not a line each
        clock.now += REFUSAL_LOG_S
        summary = await until(
            lambda: [m for m in said(caplog, Refusal.NO_HANDSHAKE) if "4 more" in m],
            WAIT_S,
            "the four held back said in one line",
        )
        assert "(5 in all)" in summary[0], summary
        assert len(said(caplog, Refusal.NO_HANDSHAKE)) == 2
        assert node.status()["stats"]["no_handshake"] == 5
        assert node.stats.unknown_key == node.stats.refused == 0  # garbage is not a key
        # And on /metrics, by kind, from the same status.
        family = mesh_refusals(node.status()["stats"])
        by_kind = {sample.labels["kind"]: sample.value for sample in family.samples}
        assert family.name == "gibsey_mesh_refused" and by_kind["no_handshake"] == 5
        assert set(by_kind) == {kind.name.lower() for kind in Refusal}


async def test_a_flood_of_garbage_is_one_line_and_does_not_wedge_the_mesh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Tried: FLOOD stray connections in a row, from a thread while the node runs, more than
    libzmq's monitor queue holds (an unread monitor stops libzmq's I/O thread). Must hold:
    each is counted, one line says them until the interval passes, and a member still
    completes its handshake and is heard afterwards."""
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    async with running(tmp_path) as (node, _):
        port = port_of(node)

        def flood() -> None:
            for _ in range(FLOOD):
                send_raw(port, GARBAGE)

        await asyncio.wait_for(asyncio.to_thread(flood), WAIT_S)
        await until(lambda: node.stats.no_handshake == FLOOD, WAIT_S, "every stray counted")
        assert len(said(caplog, Refusal.NO_HANDSHAKE)) == 1
        s = dealer(zctx, node, MEMBER)
        s.send_multipart([wire.SYNC, b"", b"", b""])
        key = MEMBER.verify_key.encode()
        await until(lambda: key in node.peers, WAIT_S, "the member heard after the flood")
        s.close()


# A ZMTP 3.0 greeting (RFC 23): signature, version 3.0, mechanism NULL (no CurveZMQ), as-server
# 0, filler: what a ZeroMQ socket with no Curve keys sends first.
NULL_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)


async def test_a_zeromq_client_without_curve_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: a ZeroMQ peer with no CurveZMQ at all (its greeting names the NULL mechanism).
    Must hold: one line naming the mechanism mismatch, and its counter in the status. The peer
    here keeps its connection open: a libzmq socket closes its end as soon as it reads the
    node's CURVE greeting, and the node then finds a cut handshake or the mismatch, whichever
    it reads first (a race of the two ends' scheduling, not of the node)."""
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    async with running(tmp_path) as (node, _):
        with socket.create_connection(("127.0.0.1", port_of(node)), timeout=WAIT_S) as peer:
            assert len(NULL_GREETING) == 64
            peer.sendall(NULL_GREETING)
            lines = await until(
                lambda: said(caplog, Refusal.BAD_HANDSHAKE), WAIT_S, "the handshake without Curve"
            )
        assert len(lines) == 1 and "zmtp_mechanism_mismatch" in lines[0], lines
        assert node.status()["stats"]["bad_handshake"] == 1


async def test_fifty_connections_of_an_unknown_key_are_said_in_two_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Tried: fifty CurveZMQ handshakes of a key on no allow-list, held open, from 127.0.0.1 and
    49 other addresses (one address holding more than max_peers is cut as CROWDED, not heard).
    Must hold: the first is said at once with the key's first 16 hex digits and the address; the
    other 49 are one line with their count once the interval has passed, never a line each."""
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    curve_hex = bytes(zmq.utils.z85.decode(curve_keypair(STRANGER)[1])).hex()[:16]
    async with running(tmp_path) as (node, clock):
        socks = [dealer(zctx, node, STRANGER)]
        await until(lambda: node.stats.unknown_key == 1, WAIT_S, "the first refusal")
        socks += [dealer(zctx, node, STRANGER, f"127.0.1.{i}") for i in range(1, 50)]  # held
        await until(lambda: node.stats.unknown_key == 50, WAIT_S, "fifty refusals")
        first = said(caplog, Refusal.UNKNOWN_KEY)
        assert len(first) == 1, first
        assert f"curve key {curve_hex} from 127.0.0.1" in first[0]
        clock.now += REFUSAL_LOG_S / 2
        node.refusals.flush()  # not due yet: still one line
        assert len(said(caplog, Refusal.UNKNOWN_KEY)) == 1
        clock.now += REFUSAL_LOG_S / 2
        summary = await until(
            lambda: [m for m in said(caplog, Refusal.UNKNOWN_KEY) if "49 more" in m],
            WAIT_S,
            "the 49 held back said in one line",
        )
        assert curve_hex in summary[0] and "(50 in all)" in summary[0], summary
        assert len(said(caplog, Refusal.UNKNOWN_KEY)) == 2
        stats = node.status()["stats"]
        assert stats["unknown_key"] == stats["refused"] == 50 == len(socks)


async def test_a_member_that_sends_malformed_messages_is_said_past_its_ban(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Tried: an allow-listed key sends messages of no kind the mesh knows: three strikes ban
    it, and twenty more follow. Must hold: each strike is said; what comes after the ban is
    said once (it is dropped unread), and counted one by one."""
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    async with running(tmp_path) as (node, _):
        s = dealer(zctx, node, MEMBER)
        for _ in range(3):
            s.send_multipart([b"Z", b"junk"])
        key = MEMBER.verify_key.encode()
        peer = await until(lambda: node.peers.get(key), WAIT_S, "the member heard")
        await until(lambda: peer.state == "banned", WAIT_S, "the member banned")
        strikes = [r.getMessage() for r in caplog.records if "strike" in r.getMessage()]
        assert len(strikes) == 3 and "malformed message" in strikes[0], strikes
        for _ in range(20):
            s.send_multipart([wire.SYNC, b"", b"", b""])
        await until(lambda: node.stats.limited == 20, WAIT_S, "twenty messages dropped")
        lines = said(caplog, Refusal.LIMITED)
        assert len(lines) == 1 and f"{key.hex()[:16]} (banned)" in lines[0], lines
        assert node.status()["stats"]["limited"] == 20


async def test_a_peer_dialed_with_a_stale_key_is_said_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: a second node dials the first with MEMBER's key for it (as after a node's key
    changed), its dialer retrying every 0.2 s; the first cannot read its hello. Must hold: each
    side says it once, the dialer naming the peer, and the retries only as counts (the
    dialer's in one line as it stops, with what it held back)."""
    caplog.set_level(logging.INFO, logger="gibsey.mesh")
    async with running(tmp_path) as (node, _):
        member = MEMBER.verify_key.encode()
        cfg = quick_mesh_config([PeerSpec(member, node.endpoint)], {member})
        store = Store.open(tmp_path / "dialer")
        dialer = MeshNode(store, STRANGER, cfg, listen=False, refusal_clock=Clock())
        await dialer.start()
        try:
            await until(lambda: dialer.stats.dial_failed >= 5, WAIT_S, "five failed dials")
            await until(lambda: node.stats.bad_handshake >= 5, WAIT_S, "five unreadable hellos")
            assert len(said(caplog, Refusal.DIAL_FAILED)) == 1
        finally:
            await dialer.stop()
            store.close()
        dials = said(caplog, Refusal.DIAL_FAILED)
        assert len(dials) == 2 and member.hex()[:16] in dials[0], dials
        assert "is the key we have for it its own, and is what listens there a Gibsey" in dials[0]
        assert f"({dialer.stats.dial_failed} in all)" in dials[1], dials
        hellos = said(caplog, Refusal.BAD_HANDSHAKE)
        assert len(hellos) == 1 and "zmtp_cryptographic" in hellos[0], hellos
