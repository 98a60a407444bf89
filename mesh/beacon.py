"""LAN discovery: a signed UDP broadcast carrying the node's key and mesh endpoint.

    datagram = MAGIC || canonical JSON {"ep": endpoint, "key": hex, "t": wall ms} || signature
    signature = ed25519(node key, DOMAIN || MAGIC || json)

Every `beacon_interval` seconds the node broadcasts to `beacon_addr:beacon_port`; it listens on
the same port (SO_REUSEADDR/SO_REUSEPORT, so several nodes on one host can share it). A beacon
only tells where an allow-listed key can be dialed: keys not on the allow-list are ignored, and
the CurveZMQ handshake still authenticates whoever answers at that endpoint, so a spoofed beacon
can at most waste a connection attempt. A wildcard host in the endpoint is replaced by the
datagram's source address.

A captured beacon stays validly signed for good, so a replay of it (from any address) must not
move a peer: a beacon counts only if its `t` is greater than the last one taken from its key
(kept in memory, one number per allow-listed key). `t` is only ever compared with the same
sender's earlier `t`, never with our clock: a Pi has no RTC and its wall clock may be years off.
A peer whose endpoint is configured (`[mesh] peers`) is never moved by a beacon at all.

A beacon signed with this node's own key is its own, looped back, unless its `t` is none of the
last SENT_KEPT this node sent and newer than the oldest of them: then another node signs with
this key now (a data directory or a whole card copied, node.key with it), and both would sign
their next entries at the same seqs, a fork. It is said (Refusal.ONE_KEY_TWO_NODES) on both
twins, each hearing the other, as a peer they both dial says it (MeshNode._note_advertised); an
older `t` (a replay of a capture, or a twin whose clock is far behind) is not.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from .node import Refusal

if TYPE_CHECKING:
    from .node import MeshNode

log = logging.getLogger("gibsey.mesh.beacon")
MAGIC = b"GIBSEY-MESH1"
DOMAIN = b"gibsey/mesh-beacon/v1\x00"
MAX_DATAGRAM = 1024
# Our own beacons' `t`s remembered, to tell them from a twin's: ~5.7 hours at the default 5 s,
# 32 KiB at most.
SENT_KEPT = 4096


def encode(mesh: MeshNode, t: int | None = None) -> bytes:
    t = int(time.time() * 1000) if t is None else t
    body = json.dumps(
        {"ep": mesh.advertised(), "key": mesh.me.hex(), "t": t},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return MAGIC + body + mesh.key.sign(DOMAIN + MAGIC + body).signature


def decode(data: bytes) -> tuple[bytes, str, int] | None:
    """(key, endpoint, t) of a valid beacon, else None."""
    if len(data) > MAX_DATAGRAM or not data.startswith(MAGIC) or len(data) < len(MAGIC) + 66:
        return None
    body, sig = data[len(MAGIC) : -64], data[-64:]
    try:
        obj = json.loads(body)
        key = bytes.fromhex(obj["key"])
        endpoint = str(obj["ep"])
        t = obj["t"]
        VerifyKey(key).verify(DOMAIN + MAGIC + body, sig)
    except (ValueError, KeyError, TypeError, BadSignatureError):
        return None
    if type(t) is not int:  # without an ordered `t` a beacon cannot be told from a replay
        return None
    return key, endpoint, t


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, beacon: Beacon) -> None:
        self.beacon = beacon

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.beacon.received(data, str(addr[0]))


class Beacon:
    def __init__(self, mesh: MeshNode) -> None:
        self.mesh = mesh
        self.transport: asyncio.DatagramTransport | None = None
        self.task: asyncio.Task[None] | None = None
        self.heard = 0
        self.stale = 0  # replayed or out-of-order beacons ignored (counted, not logged each)
        # key -> the greatest `t` taken from it; only allow-listed keys get here, so bounded.
        self.last_t: dict[bytes, int] = {}
        self.noted: set[bytes] = set()  # configured peers whose differing beacon was logged
        self.sent: collections.deque[int] = collections.deque(maxlen=SENT_KEPT)  # our `t`s
        self.twin_t = -1  # the newest `t` of a beacon another node signed with our key

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", self.mesh.cfg.beacon_port))
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self.transport = transport
        self.task = asyncio.create_task(self._announce(), name="mesh-beacon")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.close()

    async def _announce(self) -> None:
        cfg = self.mesh.cfg
        while True:
            if self.transport is not None:
                t = max(int(time.time() * 1000), self.sent[-1] + 1 if self.sent else 0)
                self.sent.append(t)  # rising: the oldest kept is first
                try:
                    self.transport.sendto(encode(self.mesh, t), (cfg.beacon_addr, cfg.beacon_port))
                except OSError as exc:  # no route yet (link down): try again next time
                    log.debug("beacon: %s", exc)
            await asyncio.sleep(cfg.beacon_interval)

    def received(self, data: bytes, source: str) -> None:
        got = decode(data)
        if got is None:
            return
        key, endpoint, t = got
        if key == self.mesh.me:
            self._own_key(t, endpoint, source)
            return
        if key not in self.mesh.allowed:
            return
        if t <= self.last_t.get(key, -1):
            # A replay or an old capture (or the sender's clock stepped back: it is heard again
            # once its clock passes this `t`, or when we restart). Whoever replays must not
            # fill the log: debug only, with a count.
            self.stale += 1
            log.debug("beacon: stale beacon of %s ignored (%d so far)", key.hex()[:16], self.stale)
            return
        self.last_t[key] = t
        self.heard += 1
        if endpoint.startswith("tcp://"):
            host, _, port = endpoint[6:].rpartition(":")
            if host in ("0.0.0.0", "*", ""):
                endpoint = f"tcp://{source}:{port}"
        configured = self._configured(key)
        if configured:
            # The operator's word wins: a signature proves who once sent a beacon, not who
            # sends it now, nor from where.
            if endpoint != configured and key not in self.noted:
                self.noted.add(key)
                log.info(
                    "mesh: beacon of %s says %s; keeping its configured endpoint %s",
                    key.hex()[:16],
                    endpoint,
                    configured,
                )
            return
        self.mesh.add_peer(key, endpoint)

    def _own_key(self, t: int, endpoint: str, source: str) -> None:
        """A beacon signed with our key: ours looped back, a replay, or a twin (see above)."""
        if not self.sent or t <= self.sent[0] or t <= self.twin_t or t in self.sent:
            return
        self.twin_t = t
        self.mesh.refuse(
            Refusal.ONE_KEY_TWO_NODES,
            f"{self.mesh.me.hex()[:16]} (this node's own key) in a beacon from {source} "
            f"({endpoint}) that this node did not send",
            about=self.mesh.me.hex(),
        )

    def _configured(self, key: bytes) -> str:
        """The endpoint `[mesh] peers` gives `key`, else "" (a peer met by beacon or dial)."""
        for spec in self.mesh.cfg.peers:
            if spec.key == key and spec.endpoint:
                return spec.endpoint
        return ""
