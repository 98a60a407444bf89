"""The mesh engine: gossip of the ledger's feeds with the node's peers over CurveZMQ.

Sockets, and why. Every node binds one ROUTER (a CurveZMQ server) and opens one DEALER (a
CurveZMQ client) per peer it dials, so between two nodes there are two connections, one each
way. A dialer runs anti-entropy rounds on its DEALER; the listener answers on its ROUTER,
addressed by the routing id, so one socket serves any number of peers. DEALER/ROUTER is fully
asynchronous: a round is "send S, receive E.. F.. H" with no lockstep, a lost reply costs a
timeout instead of wedging the socket (REQ/REP's failure mode), and pushes of new entries share
the same connection. Peers are told apart by their CurveZMQ key (the ZAP `User-Id`), which the
handshake authenticated; routing ids are never trusted.

A round (the dialer A, the listener B):
  A -> B  S(vv_A, forks_A, endpoint_A)
  B -> A  E(entries A lacks, bounded)..., F(proofs A lacks)..., H(vv_B, forks_B, more)
  A -> B  E(entries B lacks, bounded)..., F(proofs B lacks)...
A version vector carries each feed's head seq and the first bytes of the head's hash, so a
node that holds a different entry at a seq its peer holds (a fork) sends its own entry at that
seq: the import on the other side turns the pair into a fork proof, which then travels like
entries (F). New entries of this node's own feed are pushed to connected peers at once (E,
coalesced into batches); entries of other feeds are relayed by rounds, so in a full mesh (one
room) each entry crosses each link once, from its author.

Bounds: frame size (ZMQ_MAXMSGSIZE), frames per message, entries per message and per round,
version-vector length, peers held, socket queues (HWM; a push that would block is dropped and
left to anti-entropy), and a token bucket per peer on inbound messages. A peer that sends
forged or malformed data gets a strike: its rate drops to one message a second; at
`max_strikes` it is dropped (its messages ignored, its key refused at the handshake, our
connection to it closed) for `ban_seconds`.

What is refused or dropped from outside (a key not on the allow-list, bytes on our port that are
no CurveZMQ handshake, a flood past a peer's rate or ban) is counted in the status per kind and
said in the log paced: the first of a kind at once, then one line a minute at most with how
many more came (core/paced.py), so a stranger reconnecting in a loop cannot fill the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from nacl.signing import SigningKey
from zmq.auth.base import Authenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from gibsey.core import memory, trace
from gibsey.core.paced import PacedLog
from gibsey.core.storage import StorageError
from gibsey.ledger.entry import MAX_GROUP, Entry
from gibsey.ledger.errors import LedgerError, Rejected, RejectReason
from gibsey.ledger.forkproof import ForkProof
from gibsey.ledger.store import ImportResult, ImportStatus, Store

from . import wire
from .config import MeshConfig, PeerSpec, curve_keypair, curve_public
from .errors import ListenError
from .sources import SourceCounts, listening_port

log = logging.getLogger("gibsey.mesh")

STATUS_FILENAME = "mesh-status.json"
# Rejections that only a forger or a broken peer produces; chain-position rejections (a gap, a
# wrong prev, a quarantined author) can happen to honest peers and are not held against them.
FORGED = frozenset(
    {
        RejectReason.MALFORMED,
        RejectReason.NOT_CANONICAL,
        RejectReason.TOO_LARGE,
        RejectReason.BODY_TOO_LARGE,
        RejectReason.UNKNOWN_TYPE,
        RejectReason.INVALID_BODY,
        RejectReason.BAD_SIGNATURE,
        RejectReason.BAD_FORK_PROOF,
    }
)
_AUTHOR_PREFIX = b'{"author":"'  # how every entry's canonical payload begins (CANONICAL.md)
PENALTY_RATE = 1.0  # messages/s a peer with strikes may still send
# How far below a seq where a peer's chain differs from ours we send ours, so that its import
# finds where the two chains part (missing_for): two groups' worth.
FORK_LOOKBACK = 2 * MAX_GROUP
# A peer whose rounds advertise again the endpoint they left within this long: two nodes.
MOVED_BACK_S = 120.0
STOP_WAIT_S = 5.0  # how long stop() waits for its cancelled tasks before closing regardless
DISK_LOG_S = 60.0  # at most one log line this often while the disk refuses imports
# Refusals (a stranger's key, bytes that are no handshake, a flood): the first of a kind is said
# at once, the rest at most one line this often per kind, with their count (core/paced.py).
REFUSAL_LOG_S = 60.0
REFUSAL_TICK_S = 1.0  # how often refusals held back are checked for a line that is due
# A connection to our port still in its handshake after this is closed. libzmq's default (30 s)
# let a stranger's idle connections pile up: an outside tester held thousands open, with no
# key, until the node had no file descriptor left for its gateway or ledger.
HANDSHAKE_S = 5.0
# Connections open on our port at once beyond max_peers (handshakes under way, a flood): past
# this, the port is closed for SHED_S, and libzmq closes every connection it accepted there
# with it; our peers' dialers reconnect once it listens again, and ours to them go on meanwhile.
MAX_HANDSHAKING = 256
SHED_S = 5.0
# What the listener's monitor reports: each connection's coming and going, and its handshake's
# outcome (see _watch).
LISTENER_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
SNDHWM = 64
RCVHWM = 1000
# Entries received from one peer and not yet stored, at most (queued and being imported): a
# catch-up holds this many in memory however long the history, and the peer's next round is
# asked for only when they fit, so the sender waits rather than the receiver growing.
INBOX_ENTRIES = 2 * wire.MAX_ROUND
# Entries per import transaction: queued messages are imported together, one fsync for many.
IMPORT_BATCH = wire.MAX_ROUND
# And in bytes: entries are 300 B (a gift) to 8 KiB, and a story's are ~4 KiB, so 2,048 of them
# were 8 MB of raws and ~24 MB parsed in one import (its results hold every entry parsed). An
# outside tester's node receiving a 42 MB corpus held 326 MB after it. A batch of gifts stays
# one import; one of story parts is a message or two (~256 entries, ~3 MB parsed).
IMPORT_BATCH_BYTES = 2 * wire.MAX_BATCH_BYTES
INBOX_BYTES = 2 * IMPORT_BATCH_BYTES
# After a catch-up (the inbox empty once this much was stored since), the C allocator's free
# memory is given back (core/memory.py): each import's garbage sat in the arena of whichever of
# the pool's threads ran it, ~25 MB each, resident until the process ended.
GIVE_BACK_BYTES = 4 * IMPORT_BATCH_BYTES
# Messages a peer may send in answer to one of our syncs beyond its rate (its entries, proofs
# and heads for one round), and at most this many rounds' worth: a catch-up's answers are what
# we asked for, not a flood, and the per-peer rate would otherwise cap a catch-up at
# peer_rate x MAX_BATCH entries/s.
ROUND_CREDIT = 2 * (wire.MAX_ROUND // wire.MAX_BATCH) + 8
MAX_CREDIT = 2 * ROUND_CREDIT
MAX_UNACKED = 8  # sends of one feed to one peer remembered until its version vector has them


async def _wait_set(evt: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `evt` at most `timeout_s`; True if it is set. Not `asyncio.wait_for`: on Python
    3.11 it swallows a cancel that arrives in the loop turn in which the event fires (a peer's
    reply landing as the node stops), and the dialer then never ends; `asyncio.timeout` awaits
    in this task and lets the cancel through."""
    try:
        async with asyncio.timeout(timeout_s):
            await evt.wait()
    except TimeoutError:
        return False
    return True


class Bucket:
    """Token bucket: `rate` tokens a second, at most `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Refusal(enum.Enum):
    """What the mesh refuses or drops from outside, each kind said in the log (core/paced.py).
    The value is how the log says one of them; the name in lower case is its counter in Stats,
    so the mesh's status file carries a total per kind."""

    UNKNOWN_KEY = "refused a connection from unknown key"  # not on the allow-list (ZAP)
    BANNED_KEY = "refused a connection from a banned peer"  # allow-listed, banned for strikes
    # Bytes on our port that libzmq drops without a handshake event (a ZMTP/1.0 or not-ZMTP
    # greeting while ZAP is on; a greeting followed by junk): only the listener's monitor sees
    # the connection come and go, so nothing else would ever say it.
    NO_HANDSHAKE = "dropped a connection that made no mesh handshake"
    BAD_HANDSHAKE = "dropped a handshake that broke ZMTP/CurveZMQ"  # wrong key for us, no Curve
    CUT_HANDSHAKE = "a connection closed in the middle of its handshake"  # a scan, a reset
    LIMITED = "dropped messages from a peer over its rate or banned"  # after strikes, a flood
    OVER_MAX_PEERS = "ignored a peer beyond max_peers"
    DIAL_FAILED = "a handshake with a peer we dial failed"  # its refusal of us, or not a node
    # One key advertising two endpoints by turns: two nodes hold it (a data directory copied,
    # node.key with it), and each signs its own entries at the same seqs, a fork.
    ONE_KEY_TWO_NODES = (
        "two nodes speak with one key (a copied data directory?); their feeds fork at their "
        "next entries: give one a new identity"
    )
    # More connections at once than the port holds (MAX_HANDSHAKING): closed for SHED_S.
    FLOODED = "closed our port for a while: more connections at once than it holds"
    # One address holding more connections than a peer needs (mesh/sources.py): each further
    # one is closed as it comes, and the port stays open to everyone else.
    CROWDED = "closed connections from an address holding more than a gallery's peers need"


# libzmq's code in a failed handshake's event, by name; with what it usually means at a gallery.
_PROTOCOL_ERRORS: dict[int, str] = {
    getattr(zmq, name): name.removeprefix("PROTOCOL_ERROR_").lower()
    for name in dir(zmq)
    if name.startswith("PROTOCOL_ERROR_")
}
_PROTOCOL_HINTS: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "a ZeroMQ client without CurveZMQ",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "a client that does not hold our key (an old one?)",
}


def _protocol_error(code: int) -> str:
    name = _PROTOCOL_ERRORS.get(code, f"protocol error {code:#x}")
    hint = _PROTOCOL_HINTS.get(code)
    return f"{name} ({hint})" if hint else name


# What a banned key is told at its handshake (_Zap._send_zap_reply): ZAP's 500, since libzmq
# leaves a 300 ("temporary error") unanswered (the dialer hears nothing at all), and the
# status code is all a dialer hears.
BANNED_ZAP_STATUS = b"500"

DIAL_FAILURES = frozenset(
    {
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    }
)


# Handshake failures that end a dialer's socket, made anew by `_dial` after its doubling pause.
# libzmq itself never reconnects after AUTH or PROTOCOL (the peer's ZMTP ERROR, as for a
# refused key); after NO_DETAIL (a peer that hangs up in the handshake: the key we hold for it
# is not its own) it reconnects every RECONNECT_IVL, 100 ms, for ever, since its backoff
# starts again at every TCP connect that succeeds: an outside tester counted 10 dials a second
# to a peer listed with the wrong key. So every handshake failure ends the socket here.
SESSION_ENDING = DIAL_FAILURES


def _dial_failure(ev: int, value: int) -> str:
    """Why a handshake on a dialer's socket failed, from its monitor event."""
    if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH and value == int(BANNED_ZAP_STATUS):
        return (
            f"the peer has banned us for a while ({value}: it counted malformed or forged "
            "messages from us; `[mesh] ban_seconds` on its side)"
        )
    if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the peer refused our key ({value}: is ours on its allow-list?)"
    if ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _protocol_error(value)
    # A CurveZMQ server that cannot read our hello (we dial it with a key it does not hold)
    # hangs up without a word: this is all a dialer with a stale key for its peer ever sees.
    cause = os.strerror(value) if value else "closed"
    return (
        f"hung up in the handshake ({cause}): is the key we have for it its own, and is what "
        "listens there a Gibsey mesh at all?"
    )


def _close_monitor(sock: zmq.asyncio.Socket, mon: zmq.asyncio.Socket) -> None:
    """Stop `sock`'s monitor and close its socket, from the loop's thread. Read empty first:
    libzmq's I/O thread sends each event while holding the monitor's lock and blocks once
    about a thousand lie unread (measured: an unread monitor on a listener wedges the whole
    context after ~500 stray connections), so disabling it then would wait for that lock
    forever. Drained, the I/O thread goes on and the lock is free long before it could fill
    the queue again."""
    if not mon.closed:  # (closed already when the context was destroyed first)
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(mon.underlying)
        with contextlib.suppress(zmq.ZMQError):
            while raw.poll(0):
                raw.recv_multipart(zmq.NOBLOCK)
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    mon.close(linger=0)


class _Unshaken:
    """Which connections to our listener ended with no handshake outcome at all (the garbage
    libzmq closes without an event). A handshake's outcome events carry no fd, and one
    connection can have two (a refused key, then a broken pipe as its ERROR is written), so
    none is matched to a connection: one ended unshaken when no outcome at all came between
    its accept and its end. Never a false count; amid other handshakes, garbage can go
    uncounted, and a flood of it is still said by the connections that come alone."""

    def __init__(self) -> None:
        self.outcomes = 0  # handshake outcome events so far
        # fd -> `outcomes` when it was accepted. Keyed by fd, so bounded by the process's
        # descriptors even if the monitor's queue ever dropped a disconnect.
        self.accepted: dict[int, int] = {}

    def ended_unshaken(self, ev: int, value: int) -> bool:
        """Take one monitor event; True when it ends a connection that had no outcome."""
        if ev == zmq.EVENT_ACCEPTED:
            self.accepted[value] = self.outcomes  # value: the connection's fd
        elif ev == zmq.EVENT_DISCONNECTED:
            return self.accepted.pop(value, -1) == self.outcomes
        else:
            self.outcomes += 1
        return False


@dataclass
class Stats:
    bytes_out: int = 0
    bytes_in: int = 0
    msgs_out: int = 0
    frames_out: int = 0
    msgs_in: int = 0
    entries_in: int = 0  # appended from peers
    duplicates: int = 0
    rejected: int = 0
    forks: int = 0
    strikes: int = 0
    limited: int = 0  # inbound messages dropped by a rate limit or a ban
    dropped_out: int = 0  # outbound messages dropped (peer queue full / not connected)
    refused: int = 0  # handshakes refused: key not on the allow-list, or banned
    # Per kind of Refusal (its name in lower case; `limited` above is one too): what the log
    # says once a minute at most, counted one by one.
    unknown_key: int = 0
    banned_key: int = 0
    no_handshake: int = 0
    bad_handshake: int = 0
    cut_handshake: int = 0
    over_max_peers: int = 0
    dial_failed: int = 0
    one_key_two_nodes: int = 0
    flooded: int = 0
    crowded: int = 0
    rounds: int = 0
    disk_refused: int = 0  # imports the disk refused (full, failing, read-only): sent again later
    inbox_peak: int = 0  # most entries of one peer held at once awaiting storage (<= INBOX_ENTRIES)
    inbox_peak_bytes: int = 0  # their most bytes (<= INBOX_BYTES, or one message over it)
    gave_back: int = 0  # times the allocator's free memory was returned after a catch-up


@dataclass
class Peer:
    key: bytes
    endpoint: str
    curve: bytes
    bucket: Bucket
    state: str = "new"  # new -> up <-> down; banned
    last_seen: float = 0.0  # monotonic
    created: float = field(default_factory=time.monotonic)
    last_seen_wall: float = 0.0
    known: dict[bytes, int] = field(default_factory=dict)  # what the peer holds (our belief)
    known_forks: set[tuple[bytes, int]] = field(default_factory=set)
    heard: bool = False  # a heads message has told us what it holds
    strikes: int = 0
    banned_until: float = 0.0
    more: bool = False  # the heads closing our last round said the peer has more for us
    rounds: int = 0  # rounds this node completed as the dialer
    pushed_seq: int = 0  # our own feed: last seq pushed to this peer, and when
    pushed_t: float = 0.0
    # author -> the sends of that feed to this peer its version vector does not show yet, as
    # (last seq sent, when), oldest first: on their way, not sent again (see _after_sent)
    sent: dict[bytes, deque[tuple[int, float]]] = field(default_factory=dict)
    synced_t: float = 0.0  # when this peer's own round last reached our listener
    asks_more: bool = False  # our answer to that round said more remains: it will ask again
    credit: int = 0  # messages in answer to our syncs it may still send beyond its rate
    # Entries received, waiting for the importer (in arrival order: a message's entries, their
    # traces, their bytes), and how many are held.
    inbox: deque[tuple[list[bytes], dict[int, str] | None, int]] = field(default_factory=deque)
    inbox_entries: int = 0
    inbox_bytes: int = 0
    inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    inbox_room: asyncio.Event = field(default_factory=asyncio.Event)
    importer: asyncio.Task[None] | None = None
    sock: zmq.asyncio.Socket | None = None
    task: asyncio.Task[None] | None = None
    # The endpoint its rounds advertise, the one they advertised before, and when that changed:
    # one that comes back to the one before is two nodes with one key (_note_advertised).
    advertised: str = ""
    advertised_before: str = ""
    advertised_changed: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    heads_evt: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_out: int = 0
    bytes_in: int = 0
    entries_in: int = 0
    entries_out: int = 0
    rejected: int = 0
    last_reject: str = ""

    @property
    def hex(self) -> str:
        return self.key.hex()


class _Zap(Authenticator):
    """The ZAP handler (who may complete a CurveZMQ handshake), on the event loop, reading an
    asyncio socket of the node's own context.

    Not pyzmq's AsyncioAuthenticator: that one polls a blocking ZAP socket through a wrapper
    whose event-loop reader is removed by a callback that runs *after* the socket is closed,
    by file-descriptor number - which by then can belong to the next node's new socket (a node
    started after another stopped in the same loop then never completes a handshake). An
    asyncio socket unregisters from the loop as it closes."""

    address = ""  # the IP address of the request being handled (see handle_zap_message)

    def start(self) -> None:
        sock: zmq.asyncio.Socket = self.context.socket(zmq.REP)
        sock.linger = 1
        sock.bind("inproc://zeromq.zap.01")
        self.zap_socket = self._sock = sock
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        while True:
            await self.handle_zap_message(await self._sock.recv_multipart())

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # pyzmq hands the credentials provider the key alone; the gate's log line names the
        # address too, so a technician can find the stranger's device on the venue's network.
        # Requests are handled one at a time, so this is the address of the key being checked.
        self.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def stop(self) -> None:
        self._task.cancel()
        super().stop()  # closes the socket (linger 1 ms), in this thread

    banned = False  # the gate's last refusal was of a banned key (see _send_zap_reply)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        # A banned peer is told BANNED_ZAP_STATUS, not 400: its dialer then says it
        # is banned for a while, not that we refused its key (an outside tester, so told, went
        # looking at the allow-lists). pyzmq's handler says 400 for every refusal.
        if status_code == b"400" and self.banned:
            status_code, status_text = BANNED_ZAP_STATUS, b"banned for a while"
        self.banned = False
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


class _Gate:
    """ZAP credentials provider: only allow-listed, unbanned keys complete the handshake."""

    def __init__(self, mesh: MeshNode, zap: _Zap) -> None:
        self.mesh = mesh
        self.zap = zap

    def callback(self, domain: str, key: bytes) -> bool:
        ed = self.mesh.curve_to_ed.get(key)
        where = f" from {self.zap.address}" if self.zap.address else ""
        if ed is None:
            self.mesh.stats.refused += 1
            # The Curve key (a stranger's ed25519 key cannot be told from it), in hex as keys
            # are shown everywhere else.
            curve = z85.decode(key).hex()[:16] if len(key) == 40 else repr(key[:40])
            self.mesh.refuse(Refusal.UNKNOWN_KEY, f"curve key {curve}{where}")
            return False
        peer = self.mesh.peers.get(ed)
        if peer is not None and peer.banned_until > time.monotonic():
            self.mesh.stats.refused += 1
            self.mesh.refuse(Refusal.BANNED_KEY, f"{ed.hex()[:16]}{where}")
            self.zap.banned = True
            return False
        return True


class MeshNode:
    """One node's mesh: its listener, its dialers, its beacon, its status file."""

    def __init__(
        self,
        store: Store,
        key: SigningKey,
        config: MeshConfig,
        *,
        data_dir: Path | None = None,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        listen: bool = True,
        refusal_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.key = key
        self.me = bytes(key.verify_key)
        self.cfg = config
        self.data_dir = data_dir
        self.emit = emit
        self.listen = listen
        self.curve_secret, self.curve_public = curve_keypair(key)
        self.allowed: set[bytes] = config.allowed() - {self.me}
        self.curve_to_ed: dict[bytes, bytes] = {curve_public(k): k for k in self.allowed}
        self.peers: dict[bytes, Peer] = {}
        self.stats = Stats()
        self.endpoint = ""  # the bound endpoint (with the real port when listen used port 0)
        self.ctx: zmq.asyncio.Context | None = None
        self.router: zmq.asyncio.Socket | None = None
        self._auth: _Zap | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = asyncio.Event()
        self._new_proofs: list[bytes] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = asyncio.Event()
        self._beacon: Any = None
        self._shedding = False  # the port is closed for a flood (_shed) until _listen_again
        self.linger_ms = 0
        self._stopping = False
        # author -> when we last imported one of its entries (the relay hold-off, see _effective)
        self.fresh: dict[bytes, float] = {}
        self._disk_logged = -DISK_LOG_S  # when a refused import was last logged (monotonic)
        # Peers that showed they hold no more of our feed than we do, while it is held
        # (ledger/ownfeed.py: a damaged entry log): all of them, and it is signed on again.
        self.own_confirmed: set[bytes] = set()
        self.refusals = PacedLog(log, "mesh: ", REFUSAL_LOG_S, refusal_clock)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.ctx = zmq.asyncio.Context()
        try:
            await self._start_parts()
        except BaseException:
            # A half-started node leaves no task running and no context for the collector.
            for t in self._tasks:
                t.cancel()
            self._tasks = []
            self._close_zmq()
            raise
        self.started.set()
        log.info("mesh: %s listening on %s", self.me.hex()[:16], self.endpoint or "-")

    async def _start_parts(self) -> None:
        assert self.ctx is not None
        self._auth = _Zap(self.ctx, log=logging.getLogger("gibsey.mesh.zap"))
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=_Gate(self, self._auth))
        self.store.subscribe(self._on_stored)
        if self.listen:
            if not self.store.own_feed_held():  # else once signed on (_sign_on)
                await asyncio.to_thread(self._record_members)
            r = self.ctx.socket(zmq.ROUTER)
            r.curve_server = True
            r.curve_secretkey = self.curve_secret
            r.curve_publickey = self.curve_public
            r.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME)
            r.setsockopt(zmq.RCVHWM, RCVHWM)
            r.setsockopt(zmq.SNDHWM, SNDHWM * 4)
            r.setsockopt(zmq.LINGER, 0)
            r.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))
            try:
                r.bind(self.cfg.listen)
            except zmq.ZMQError as exc:
                r.close(linger=0)
                why = os.strerror(exc.errno or 0)  # pyzmq's strerror adds "(addr=...)"
                raise ListenError(
                    f"cannot listen on {self.cfg.listen}: {why} (another node or "
                    "`gibsey mesh serve` on it? set [mesh] listen)"
                ) from None
            self.endpoint = r.getsockopt_string(zmq.LAST_ENDPOINT)
            self.router = r
            self._tasks.append(asyncio.create_task(self._serve(), name="mesh-serve"))
            mon = r.get_monitor_socket(LISTENER_EVENTS)
            self._tasks.append(asyncio.create_task(self._watch(r, mon), name="mesh-watch"))
        for spec in self.cfg.peers:
            self.add_peer(spec.key, spec.endpoint)
        self._tasks += [
            asyncio.create_task(self._flush_loop(), name="mesh-push"),
            asyncio.create_task(self._refresh_loop(), name="mesh-refresh"),
            asyncio.create_task(self._refusal_loop(), name="mesh-refusals"),
        ]
        if self.data_dir is not None:
            self._tasks.append(asyncio.create_task(self._status_loop(), name="mesh-status"))
        if self.store.own_feed_held():
            if not self.allowed:
                self._sign_on("no peer is on the allow-list, so none holds this node's feed")
            else:
                wait = asyncio.create_task(self._own_feed_wait(), name="mesh-own-feed")
                self._tasks.append(wait)
        if self.listen and self.cfg.beacon_port:
            from .beacon import Beacon

            self._beacon = Beacon(self)
            await self._beacon.start()

    def _record_members(self) -> None:
        """Record the gallery as our allow-list names it (a `members` entry, only if it changed
        since our last one): hearings need the say of a majority of these nodes (GOVERNANCE.md).
        A full disk, a list too long to record, or our own feed that cannot be extended (a bad
        row, a fork) is said, and the mesh runs on: it still serves what it holds."""
        from gibsey.ledger import membership

        try:
            if membership.record(self.store, self.key, self.allowed) is not None:
                log.info("mesh: recorded the gallery's %d member nodes", len(self.allowed) + 1)
        except (StorageError, LedgerError, ValueError) as exc:
            log.error("mesh: the gallery's members were not recorded: %s", exc)

    async def stop(self) -> None:
        """Stop every task, then close every socket and the context, here in the event loop's
        thread, which owns them - also when this stop is itself cancelled (a caller's timeout).
        Never left to the garbage collector: pyzmq's `Context.__del__` terminates a context
        from whatever thread the collector happens to run in, and `term` blocks for good while
        any socket is open (the hung `gibsey bench mesh`)."""
        self._stopping = True  # no new dialers from here on (a SYNC's dial-back)
        if self._beacon is not None:
            self._beacon.stop()
        try:
            tasks = self._tasks + [p.task for p in self.peers.values() if p.task]
            tasks += [p.importer for p in self.peers.values() if p.importer]
            for t in tasks:
                t.cancel()
            if tasks:
                # Bounded: every task ends at its cancel; if one ever did not, its sockets are
                # closed below anyway rather than waited for.
                await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        finally:
            self._tasks = []
            self._close_zmq()
            self.refusals.flush(force=True)  # what was held back is said, not lost with us
            if self.data_dir is not None:
                self.write_status()

    def _close_zmq(self) -> None:
        """Close every socket of this node with a bounded linger, then terminate its context
        (synchronous: nothing here can be interrupted by a cancel)."""
        for p in self.peers.values():
            if p.sock is not None:
                p.sock.close(linger=self.linger_ms)
                p.sock = None
        if self.router is not None:
            self.router.close(linger=0)
            self.router = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self.ctx is not None and not self.ctx.closed:
            # Closes whatever is still open (a dialer's monitor socket whose task never got to
            # its `finally`), each with the same linger bound, then terminates.
            self.ctx.destroy(linger=self.linger_ms)

    async def run(self) -> None:
        """Start and serve until cancelled (the daemon's service factory)."""
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # ---- peers ----------------------------------------------------------------------------

    def advertised(self) -> str:
        return self.cfg.advertise or self.endpoint

    def add_peer(self, key: bytes, endpoint: str) -> Peer | None:
        """Dial `key` at `endpoint` (or move it there); only allow-listed keys, bounded count."""
        if key == self.me or key not in self.allowed:
            return None
        peer = self.peers.get(key)
        if peer is not None:
            if endpoint and peer.endpoint != endpoint and peer.sock is not None:
                log.info("mesh: peer %s moved to %s", key.hex()[:16], endpoint)
                peer.sock.disconnect(peer.endpoint) if peer.endpoint else None
                peer.sock.connect(endpoint)
                peer.endpoint = endpoint
                peer.wake.set()
            elif endpoint and not peer.endpoint:
                peer.endpoint = endpoint
                self._start_dialer(peer)
            return peer
        if len(self.peers) >= self.cfg.max_peers:
            # Said paced: each message of such a peer reaching our listener comes by here.
            self.refuse(Refusal.OVER_MAX_PEERS, f"{key.hex()} (max_peers = {self.cfg.max_peers})")
            return None
        burst = max(self.cfg.peer_rate * 2, 10.0)
        peer = Peer(key, endpoint, curve_public(key), Bucket(self.cfg.peer_rate, burst))
        self.peers[key] = peer
        if endpoint:
            self._start_dialer(peer)
        return peer

    def _start_dialer(self, peer: Peer) -> None:
        if self.ctx is None or peer.task is not None or self._stopping:
            return
        peer.task = asyncio.create_task(self._dial(peer), name=f"mesh-peer-{peer.hex[:8]}")

    def _set_state(self, peer: Peer, state: str, detail: str = "") -> None:
        if peer.state == state:
            return
        peer.state = state
        log.info("mesh: peer %s %s %s", peer.hex[:16], state, detail)
        if self.emit is not None and state in ("up", "down", "banned"):
            payload = {"key": peer.hex, "state": state, "endpoint": peer.endpoint}
            if detail:
                payload["detail"] = detail[:256]
            try:
                self.emit("mesh/peer", payload)
            except Exception:  # the spine may not be connected; the mesh keeps going
                log.debug("mesh: could not emit mesh/peer", exc_info=True)

    def _seen(self, peer: Peer) -> None:
        peer.last_seen = time.monotonic()
        peer.last_seen_wall = time.time()
        if peer.state != "banned":
            self._set_state(peer, "up")

    def _strike(self, peer: Peer, why: str) -> None:
        peer.strikes += 1
        self.stats.strikes += 1
        peer.last_reject = why[:200]
        log.warning("mesh: strike %d against %s: %s", peer.strikes, peer.hex[:16], why)
        if peer.strikes >= self.cfg.max_strikes:
            peer.banned_until = time.monotonic() + self.cfg.ban_seconds
            self._set_state(peer, "banned", why)
            if peer.sock is not None and peer.endpoint:
                with contextlib.suppress(zmq.ZMQError):
                    peer.sock.disconnect(peer.endpoint)
        else:
            peer.bucket = Bucket(PENALTY_RATE, 2.0)

    def _banned(self, peer: Peer) -> bool:
        if peer.banned_until and peer.banned_until <= time.monotonic():
            peer.banned_until, peer.strikes = 0.0, 0
            peer.bucket = Bucket(self.cfg.peer_rate, max(self.cfg.peer_rate * 2, 10.0))
            self._set_state(peer, "down", "ban expired")
            if peer.sock is not None and peer.endpoint:
                peer.sock.connect(peer.endpoint)
        return peer.banned_until > 0

    # ---- what we hold, what they lack ---------------------------------------------------------

    def version_vector(self) -> wire.VersionVector:
        self.store.refresh()  # one PRAGMA unless another process (the ledger CLI) committed
        with self.store.lock:
            out: wire.VersionVector = {}
            for author_hex, seq in self.store.heads().items():
                author = bytes.fromhex(author_hex)
                head = self.store.head(author)
                if head is not None:
                    out[author] = (seq, head.hash[:8])
            return out

    def fork_keys(self) -> set[tuple[bytes, int]]:
        return {(p.author, p.seq) for p in self.store.fork_proofs()}

    def missing_for(
        self, theirs: wire.VersionVector, their_forks: wire.ForkKeys, limit: int = wire.MAX_ROUND
    ) -> tuple[list[bytes], bool]:
        """Entries the holder of `theirs` lacks (seq order per feed), at most `limit`; and
        whether more remain. Where they hold a different entry at a seq we hold, ours at that
        seq is sent: importing it gives them the fork proof."""
        out: list[bytes] = []
        size = 0  # their bytes (wire.MAX_ROUND_BYTES)
        more = False
        quarantine = self.store.quarantine()
        for a, fs in their_forks:  # nothing from a fork point on is trusted: not sent either
            quarantine[a] = min(quarantine.get(a, fs), fs)
        for author, (seq, h8) in self.version_vector().items():
            q = quarantine.get(author)
            top = seq if q is None else min(seq, q - 1)
            their_seq, their_h8 = theirs.get(author, (0, b""))
            if their_seq and their_seq <= seq and (q is None or their_seq < q):
                ours = h8 if their_seq == seq else self._hash8(author, their_seq)
                if ours != their_h8:
                    # Ours from FORK_LOOKBACK entries before that seq, to the signed head after
                    # it (an unsigned entry counts, and makes a fork proof, only with its
                    # group's head). The two chains may part below that seq (unsigned entries
                    # of a group, entries signed since a backup was restored): their import
                    # passes what they share and proves the fork where the chains part, so
                    # every node quarantines from that seq and counts the same entries. A
                    # proof at the seq seen (an outside tester's: 66, the chains parting at
                    # 63) left each node counting its own branch's 63..65 for good.
                    start = max(0, their_seq - 1 - FORK_LOOKBACK)
                    sent = self.store.raws_after(author, start, their_seq - start)
                    out.extend(sent)
                    size += sum(len(r) for r in sent)
                    continue
            if top <= their_seq:
                continue
            room = limit - len(out)
            if room <= 0 or (out and size >= wire.MAX_ROUND_BYTES):
                more = True
                break
            got = self.store.raws_after(
                author, their_seq, min(room, top - their_seq), wire.MAX_ROUND_BYTES - size
            )
            out.extend(got)
            size += sum(len(r) for r in got)
            if their_seq + len(got) < top:
                more = True
        return out, more

    def _hash8(self, author: bytes, seq: int) -> bytes:
        e = self.store.get(author, seq)
        return e.hash[:8] if e is not None else b""

    def _proofs_for(self, their_forks: wire.ForkKeys) -> list[bytes]:
        return [
            p.to_bytes() for p in self.store.fork_proofs() if (p.author, p.seq) not in their_forks
        ][: wire.MAX_PROOFS_PER_MSG * 4]

    # ---- sending --------------------------------------------------------------------------

    def _send(self, sock: zmq.asyncio.Socket, frames: list[bytes], peer: Peer | None) -> bool:
        """Send without blocking; a full queue or an absent connection drops the message."""
        try:
            # On an asyncio socket a NOBLOCK send completes (or fails) at once, in a future.
            fut: Any = sock.send_multipart(frames, flags=zmq.NOBLOCK)
            if not fut.done():
                fut.add_done_callback(lambda f: f.exception())
            elif fut.exception() is not None:
                raise fut.exception()
        except zmq.ZMQError as exc:  # Again: queue full / no connection; or a closed socket
            log.debug("mesh: send failed: %s", exc)
            self.stats.dropped_out += 1
            return False
        n = sum(len(f) for f in frames) - (len(frames[0]) if sock is self.router else 0)
        self.stats.bytes_out += n
        self.stats.msgs_out += 1
        self.stats.frames_out += len(frames) - (1 if sock is self.router else 0)
        if peer is not None:
            peer.bytes_out += n
        return True

    def _send_entries(
        self, sock: zmq.asyncio.Socket, prefix: list[bytes], raws: list[bytes], peer: Peer
    ) -> int:
        sent = 0
        for batch in wire.batches(raws):
            traces = self._traces_of(batch) if trace.enabled() else None
            if traces:
                if not self._send_traced(sock, prefix, batch, traces, peer):
                    break
            elif not self._send(sock, [*prefix, wire.ENTRIES, *batch], peer):
                break
            sent += len(batch)
        peer.entries_out += sent
        return sent

    @staticmethod
    def _traces_of(batch: list[bytes]) -> dict[int, str]:
        """Which of these entries a traced turn appended here (index -> its traceparent)."""
        found = ((i, trace.entry_trace(raw)) for i, raw in enumerate(batch))
        return {i: tp for i, tp in found if tp is not None}

    def _send_traced(
        self,
        sock: zmq.asyncio.Socket,
        prefix: list[bytes],
        batch: list[bytes],
        traces: dict[int, str],
        peer: Peer,
    ) -> bool:
        """A T message: the entries with their turns' trace context beside them, and a span
        of each of those turns for the send."""
        start_ns = time.time_ns()
        ok = self._send(sock, [*prefix, wire.TRACED, wire.encode_traces(traces), *batch], peer)
        end_ns = time.time_ns()
        attributes = {"gibsey.mesh": self.me.hex()[:16], "gibsey.peer": peer.hex[:16]}
        for traceparent in traces.values():
            trace.record("mesh send", traceparent, start_ns, end_ns, attributes)
        return ok

    def _send_proofs(
        self, sock: zmq.asyncio.Socket, prefix: list[bytes], proofs: list[bytes], peer: Peer
    ) -> None:
        for batch in wire.batches(proofs, wire.MAX_PROOFS_PER_MSG):
            self._send(sock, [*prefix, wire.FORKS, *batch], peer)

    # ---- receiving ------------------------------------------------------------------------

    async def _handle(
        self, peer: Peer, frames: list[bytes], *, reply: list[bytes] | None, peer_addr: str = ""
    ) -> None:
        """One message from `peer` (reply = ROUTER routing prefix, None on our DEALER)."""
        n = sum(len(f) for f in frames)
        self.stats.bytes_in += n
        self.stats.msgs_in += 1
        peer.bytes_in += n
        banned = self._banned(peer)
        if banned or not (self._answer(peer, reply) or peer.bucket.take()):
            # Where a flood goes quiet: a peer with strikes is cut to PENALTY_RATE and then
            # banned, and what it sends after is dropped here, malformed or not.
            why = "banned" if banned else f"over {peer.bucket.rate:g} messages/s"
            self.refuse(Refusal.LIMITED, f"{peer.hex[:16]} ({why})")
            return
        try:
            kind = wire.check(frames)
            if (kind == wire.SYNC and reply is None) or (kind == wire.HEADS and reply is not None):
                raise wire.WireError(f"{kind!r} in the wrong direction")
            if kind == wire.ENTRIES:
                self._seen(peer)
                await self._enqueue(peer, frames[1:], None)
            elif kind == wire.TRACED:
                traces = wire.decode_traces(frames[1], len(frames) - 2)
                self._seen(peer)
                await self._enqueue(peer, frames[2:], traces)
            elif kind == wire.FORKS:
                self._seen(peer)
                await self._import_proofs(peer, frames[1:])
            elif kind == wire.SYNC:
                assert reply is not None
                vv, forks = wire.decode_vv(frames[1]), wire.decode_forks(frames[2])
                self._seen(peer)
                advertised = frames[3].decode("utf-8", "replace")
                self._on_sync(peer, reply, vv, forks, advertised)
                self._note_advertised(peer, advertised)
                if peer_addr and peer.task is None:
                    self._dial_back(peer, advertised, peer_addr)
            elif kind == wire.HEADS:
                vv, forks = wire.decode_vv(frames[1]), wire.decode_forks(frames[2])
                self._seen(peer)
                self._on_heads(peer, vv, forks, bool(frames[3][0] & wire.FLAG_MORE))
        except wire.WireError as exc:
            self._strike(peer, f"malformed message: {exc}")

    @staticmethod
    def _answer(peer: Peer, reply: list[bytes] | None) -> bool:
        """Whether a message on our DEALER (only answers to our syncs arrive there) is covered
        by the credit our syncs gave; a peer with strikes gets none."""
        if reply is not None or peer.credit <= 0 or peer.strikes:
            return False
        peer.credit -= 1
        return True

    async def _enqueue(self, peer: Peer, raws: list[bytes], traces: dict[int, str] | None) -> None:
        """Hand received entries to `peer`'s importer, first waiting until they fit in its
        bound (the reader stops reading meanwhile, so the peer's sends queue on its side)."""
        if self._stopping:  # not stored, so not in our version vector: the peer sends it again
            return
        if peer.importer is None or peer.importer.done():
            peer.importer = asyncio.create_task(self._importer(peer), name="mesh-import")
        size = sum(len(r) for r in raws)
        while peer.inbox_entries and (
            peer.inbox_entries + len(raws) > INBOX_ENTRIES or peer.inbox_bytes + size > INBOX_BYTES
        ):
            peer.inbox_room.clear()
            await peer.inbox_room.wait()
        peer.inbox.append((raws, traces, size))
        peer.inbox_entries += len(raws)
        peer.inbox_bytes += size
        self.stats.inbox_peak = max(self.stats.inbox_peak, peer.inbox_entries)
        self.stats.inbox_peak_bytes = max(self.stats.inbox_peak_bytes, peer.inbox_bytes)
        peer.inbox_ready.set()

    async def _importer(self, peer: Peer) -> None:
        """Store what `peer` sent, in arrival order, several messages per transaction, while
        the reader goes on receiving (so the next round is on its way during an import)."""
        stored = 0  # bytes imported since the allocator last gave memory back
        while True:
            await peer.inbox_ready.wait()
            if not peer.inbox:
                peer.inbox_ready.clear()
                if stored >= GIVE_BACK_BYTES:
                    stored = 0
                    await asyncio.to_thread(self._give_back)
                continue
            raws, traces, size = self._next_batch(peer)
            try:
                await self._import_entries(peer, raws, traces or None)
            except Exception:
                log.exception("mesh: error importing entries from %s", peer.hex[:16])
            finally:
                peer.inbox_entries -= len(raws)
                peer.inbox_bytes -= size
                peer.inbox_room.set()
            stored += size
            del raws, traces  # not held while the inbox waits (they were a whole batch)

    @staticmethod
    def _next_batch(peer: Peer) -> tuple[list[bytes], dict[int, str], int]:
        """The messages at the head of `peer`'s inbox that make one import (at least one, at
        most IMPORT_BATCH entries and IMPORT_BATCH_BYTES): their entries, traces and bytes."""
        raws: list[bytes] = []
        traces: dict[int, str] = {}
        size = 0
        while peer.inbox:
            batch, _, more = peer.inbox[0]
            if raws and (len(raws) + len(batch) > IMPORT_BATCH or size + more > IMPORT_BATCH_BYTES):
                break
            batch, batch_traces, _ = peer.inbox.popleft()
            traces.update({len(raws) + i: tp for i, tp in (batch_traces or {}).items()})
            raws += batch
            size += more
        return raws, traces, size

    def _give_back(self) -> None:
        """After a catch-up: the allocator's free memory back to the system (core/memory.py)."""
        if memory.give_back():
            self.stats.gave_back += 1

    def _note_advertised(self, peer: Peer, endpoint: str) -> None:
        """A peer's rounds advertise one endpoint; by turns two, and it is two nodes with one
        key (a data directory copied, node.key with it): said before their entries fork."""
        if endpoint == peer.advertised:
            return
        now = time.monotonic()
        if peer.advertised and endpoint == peer.advertised_before:
            if now - peer.advertised_changed < MOVED_BACK_S:
                sample = f"{peer.hex[:16]} at {peer.advertised} and at {endpoint}"
                self.refuse(Refusal.ONE_KEY_TWO_NODES, sample, about=peer.hex)
        peer.advertised_before, peer.advertised = peer.advertised, endpoint
        peer.advertised_changed = now

    def _dial_back(self, peer: Peer, endpoint: str, peer_addr: str) -> None:
        """A peer that dialed us but that we do not dial yet: dial it back at its endpoint."""
        if not endpoint.startswith("tcp://"):
            return
        host, _, port = endpoint[6:].rpartition(":")
        if host in ("0.0.0.0", "*", "") and peer_addr:
            endpoint = f"tcp://{peer_addr}:{port}"
        self.add_peer(peer.key, endpoint)

    def _on_sync(
        self,
        peer: Peer,
        reply: list[bytes],
        vv: wire.VersionVector,
        forks: wire.ForkKeys,
        endpoint: str,
    ) -> None:
        assert self.router is not None
        self.stats.rounds += 1
        peer.known = {a: s for a, (s, _) in vv.items()}
        peer.known_forks = forks
        peer.heard = True
        peer.synced_t = time.monotonic()
        self._confirm_own(peer, vv)
        raws, more = self.missing_for(self._effective(peer, vv), forks)
        sent = self._send_entries(self.router, reply, raws, peer)
        self._update_known(peer, raws[:sent])
        # (What the send queue refused is more too: it is asked for in the next round.)
        peer.asks_more = more or sent < len(raws)
        self._send_proofs(self.router, reply, self._proofs_for(forks), peer)
        mine = self.version_vector()
        flags = bytes([wire.FLAG_MORE if peer.asks_more else 0])
        self._send(
            self.router,
            [*reply, wire.HEADS, wire.encode_vv(mine), wire.encode_forks(self.fork_keys()), flags],
            peer,
        )

    def _on_heads(
        self, peer: Peer, vv: wire.VersionVector, forks: wire.ForkKeys, more: bool
    ) -> None:
        peer.known = {a: s for a, (s, _) in vv.items()}
        peer.known_forks = forks
        peer.heard = True
        self._confirm_own(peer, vv)
        # A peer whose own rounds reach our listener gets what it lacks in answer to those:
        # sending it here too would send each entry twice, on two connections, out of order.
        # One catching up from us asks again as soon as it has taken in our last answer,
        # which may be longer than the hold-off (an import of a round under load): until it
        # is heard from no more (down_after), it is left to its own rounds. (Measured: a
        # 4,267-entry catch-up between two test nodes, 0.05 s rounds, received 6,700-7,000
        # entries, the second stream's arriving out of order and refused as skipped.)
        since = time.monotonic() - peer.synced_t
        catching_up = peer.asks_more and since < self.cfg.down_after
        if peer.sock is not None and since >= self.cfg.sync_interval * 2 and not catching_up:
            raws, we_have_more = self.missing_for(self._effective(peer, vv), forks)
            sent = self._send_entries(peer.sock, [], raws, peer)
            self._update_known(peer, raws[:sent])
            self._send_proofs(peer.sock, [], self._proofs_for(forks), peer)
            more = more or we_have_more or sent < len(raws)
        peer.more = more
        peer.rounds += 1
        peer.heads_evt.set()

    # ---- our feed held after a damaged entry log (ledger/ownfeed.py) ------------------------

    def _confirm_own(self, peer: Peer, vv: wire.VersionVector) -> None:
        """`peer`'s version vector shows how far it holds our feed: no further than we do, at
        the same entry, and it confirms; once every allowed peer has, the feed is signed on.
        One that holds more sends it (what we lack, in this round or the next), and confirms
        once we have imported it; one that holds another entry at our seq never confirms."""
        if not self.store.own_feed_held():
            return
        their_seq, their_h8 = vv.get(self.me, (0, b""))
        head = self.store.head(self.me)
        if their_seq > (head.seq if head else 0):
            return
        if their_seq and self._hash8(self.me, their_seq) != their_h8:
            return
        self.own_confirmed.add(peer.key)
        if self.allowed <= self.own_confirmed:
            self._sign_on(f"the gallery's {len(self.allowed)} peer(s) hold no more of it")

    async def _own_feed_wait(self) -> None:
        """The bound on the hold: after `own_feed_confirm_s`, signed on with what was heard."""
        await asyncio.sleep(self.cfg.own_feed_confirm_s)
        if not self.store.own_feed_held():
            return
        unheard = sorted(k.hex()[:16] for k in self.allowed - self.own_confirmed)
        log.error(
            "mesh: %d of %d peer(s) did not show how far they hold this node's feed within "
            "%g s (%s): signing on regardless; if one holds entries this node lost, its feed "
            "forks there",
            len(unheard),
            len(self.allowed),
            self.cfg.own_feed_confirm_s,
            ", ".join(unheard),
        )
        self._sign_on(f"[mesh] own_feed_confirm_s ({self.cfg.own_feed_confirm_s:g} s) passed")

    def _sign_on(self, why: str) -> None:
        if self.store.release_own_feed(why) and self.listen:
            # The members entry the start could not sign (the feed was held).
            self._tasks.append(asyncio.create_task(asyncio.to_thread(self._record_members)))

    def _effective(self, peer: Peer, vv: wire.VersionVector) -> wire.VersionVector:
        """`vv` adjusted for what is already on its way to `peer`, so a round does not send
        it a second time: our own entries pushed to it in the last hold-off period, entries
        we sent it in that period (a catching-up peer asks for the next round while it still
        imports the last), and entries of an author we are connected to that we imported in
        that period (that author pushes them to everyone itself). Past the hold-off, a round
        sends whatever is still missing, so a lost push or a partitioned author costs delay,
        never data."""
        hold = self.cfg.sync_interval * 2
        now = time.monotonic()
        out = self._after_sent(peer, vv, now - hold)
        if now - peer.pushed_t < hold and peer.pushed_seq > out.get(self.me, (0, b""))[0]:
            head = self.store.get(self.me, peer.pushed_seq)
            if head is not None:
                out[self.me] = (peer.pushed_seq, head.hash[:8])
        for author, t in self.fresh.items():
            if now - t >= hold or author == peer.key:
                continue
            p = self.peers.get(author)
            if p is None or p.state != "up":
                continue
            h = self.store.head(author)
            if h is not None and h.seq > out.get(author, (0, b""))[0]:
                out[author] = (h.seq, h.hash[:8])
        return out

    def _after_sent(self, peer: Peer, vv: wire.VersionVector, since: float) -> wire.VersionVector:
        """`vv` advanced over what we sent `peer` and it does not show holding yet, unless the
        oldest such send is from before `since` (monotonic): then it was lost (or refused),
        and what `peer` lacks is sent again from what it holds. A fork is left to missing_for.
        """
        out = dict(vv)
        for author, sends in list(peer.sent.items()):
            their_seq, their_h8 = out.get(author, (0, b""))
            while sends and sends[0][0] <= their_seq:
                sends.popleft()  # it holds these now
            if not sends or sends[0][1] < since:
                del peer.sent[author]
                continue
            if their_seq and self._hash8(author, their_seq) != their_h8:
                continue
            ours = self._hash8(author, sends[-1][0])
            if ours:
                out[author] = (sends[-1][0], ours)
        return out

    def _update_known(self, peer: Peer, raws: list[bytes]) -> None:
        from gibsey.ledger.entry import parse

        self._record_sent(peer, raws)
        mine = b'{"author":"' + self.me.hex().encode()
        own = next((r for r in reversed(raws) if r.startswith(mine)), None)
        if own is None:
            return
        last = parse(own, verify=False)
        if last.author == self.me:
            peer.known[self.me] = max(peer.known.get(self.me, 0), last.seq)
            peer.pushed_seq, peer.pushed_t = last.seq, time.monotonic()

    @staticmethod
    def _record_sent(peer: Peer, raws: list[bytes]) -> None:
        """Remember the last entry of each feed in `raws` (seq order per feed) as sent."""
        from gibsey.ledger.entry import parse

        now = time.monotonic()
        seen: set[bytes] = set()
        for raw in reversed(raws):
            prefix = raw[: len(_AUTHOR_PREFIX) + 64]
            if prefix in seen:
                continue
            seen.add(prefix)
            last = parse(raw, verify=False)
            sends = peer.sent.setdefault(last.author, deque())
            if len(sends) >= MAX_UNACKED or (sends and sends[-1][0] >= last.seq):
                sends.clear()  # sent again from further back: its first send is the one to time
            sends.append((last.seq, now))

    def _member_feed(self, raw: bytes) -> bool:
        """Whether an entry is of a feed this node holds: its own or an allow-listed key's.
        Feeds of other keys are refused, so keys a rogue member makes up (to mint under, to
        vote through, to name in a membership list) never reach a view here (GOVERNANCE.md).
        An entry that does not even start like one is left to the store to reject."""
        head = raw[: len(_AUTHOR_PREFIX) + 64]
        if not head.startswith(_AUTHOR_PREFIX):
            return True
        try:
            author = bytes.fromhex(head[len(_AUTHOR_PREFIX) :].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return True
        return self._takes(author)

    def _takes(self, author: bytes) -> bool:
        """Whether this node holds `author`'s feed: its own or an allow-listed key's."""
        return author == self.me or author in self.allowed

    def _import_sync(self, raws: list[bytes]) -> list[ImportResult | Rejected]:
        members = [r for r in raws if self._member_feed(r)]
        self.store.refresh()
        try:
            done = iter(self.store.import_many(members))
        except sqlite3.IntegrityError:  # another process imported the same entries just now
            self.store.refresh()
            done = iter(self.store.import_many(members))
        refused = Rejected(RejectReason.NOT_A_MEMBER, "the feed's key is not on the allow-list")
        return [next(done) if self._member_feed(r) else refused for r in raws]

    def _import_refused(self, peer: Peer, exc: StorageError) -> None:
        """The disk refused an import: nothing of it was stored, and the version vector we send
        still says so, so peers send the entries again once the disk takes writes. The store
        told its DiskHealth (a node says it once per episode); here one log line a minute."""
        self.stats.disk_refused += 1
        now = time.monotonic()
        if now - self._disk_logged >= DISK_LOG_S:
            self._disk_logged = now
            log.warning(
                "mesh: the disk refuses writes (%s): an import from %s was not stored (%d so "
                "far); peers send it again once the disk takes writes",
                exc,
                peer.hex[:16],
                self.stats.disk_refused,
            )

    async def _import_entries(
        self, peer: Peer, raws: list[bytes], traces: dict[int, str] | None = None
    ) -> None:
        """Verify and store entries from `peer`; `traces` (a T message): the turns that
        appended some of them on the peer, whose traces get a span for the import here."""
        start_ns = time.time_ns()
        try:
            results = await asyncio.to_thread(self._import_sync, raws)
        except StorageError as exc:
            self._import_refused(peer, exc)
            return
        if traces:
            self._trace_imports(peer, results, traces, start_ns)
        forged: list[Rejected] = []
        for r in results:
            if isinstance(r, Rejected):
                self.stats.rejected += 1
                peer.rejected += 1
                peer.last_reject = str(r)[:200]
                if r.reason in FORGED:
                    forged.append(r)
                continue
            if r.status is ImportStatus.PENDING:
                continue  # held until its group's signed head arrives: not stored yet
            e = r.entry
            if peer.known.get(e.author, 0) < e.seq and r.status is not ImportStatus.FORK:
                peer.known[e.author] = e.seq
            if r.status is ImportStatus.APPENDED:
                self.fresh[e.author] = time.monotonic()
                self.stats.entries_in += 1 + len(r.earlier)
                peer.entries_in += 1 + len(r.earlier)
            elif r.status is ImportStatus.DUPLICATE:
                self.stats.duplicates += 1
            else:
                self.stats.forks += 1
                log.warning(
                    "mesh: fork of %s at seq %d (from %s): that node signed two entries at one "
                    "seq (an old backup of its ledger restored, or its node.key copied to a "
                    "second node); its feed counts for nothing from there on",
                    e.author_hex[:16],
                    e.seq,
                    peer.hex[:16],
                )
        if forged:
            self._strike(peer, f"{len(forged)} forged/malformed entries, e.g. {forged[0]}")

    def _trace_imports(
        self,
        peer: Peer,
        results: list[ImportResult | Rejected],
        traces: dict[int, str],
        start_ns: int,
    ) -> None:
        end_ns = time.time_ns()
        for index, traceparent in traces.items():
            r = results[index]
            status = r.reason.value if isinstance(r, Rejected) else r.status.value
            attributes = {
                "gibsey.mesh": self.me.hex()[:16],
                "gibsey.peer": peer.hex[:16],
                "gibsey.import": str(status),
            }
            if not isinstance(r, Rejected):
                attributes["gibsey.entry"] = f"{r.entry.author_hex[:16]}:{r.entry.seq}"
            trace.record("mesh import", traceparent, start_ns, end_ns, attributes)
        with trace.within(next(iter(traces.values()))):  # the journal's GIBSEY_TRACE_ID
            log.info("mesh: imported %d traced entries from %s", len(traces), peer.hex[:16])

    async def _import_proofs(self, peer: Peer, proofs: list[bytes]) -> None:
        bad: list[str] = []
        for data in proofs:
            try:
                if await asyncio.to_thread(self.store.import_fork_proof, data):
                    self.stats.forks += 1
            except Rejected as exc:
                bad.append(str(exc))
            except StorageError as exc:
                self._import_refused(peer, exc)
                break  # the rest would be refused too
        if bad:
            self._strike(peer, f"bad fork proof: {bad[0]}")

    # ---- the listener ---------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self.router is not None
        while True:
            msg = await self.router.recv_multipart(copy=False)
            if len(msg) < 2:
                continue
            user = str(msg[1].get("User-Id") or "")
            try:
                addr = str(msg[1].get("Peer-Address") or "")
            except zmq.ZMQError:
                addr = ""
            ed = self.curve_to_ed.get(user.encode()) if user else None
            if ed is None:  # cannot happen past ZAP (a key dropped from the list?); never served
                self.stats.refused += 1
                self.refuse(Refusal.UNKNOWN_KEY, f"user id {user[:40]!r} past the handshake")
                continue
            peer = self.peers.get(ed) or self.add_peer(ed, "")
            if peer is None:
                continue
            try:
                await self._handle(
                    peer, [f.bytes for f in msg[1:]], reply=[msg[0].bytes], peer_addr=addr
                )
            except Exception:
                log.exception("mesh: error handling a message from %s", ed.hex()[:16])

    def refuse(self, kind: Refusal, sample: str, about: str = "") -> None:
        """Count a refusal in the status (the Stats field named as `kind`) and say it, paced."""
        counter = kind.name.lower()
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.refusals.note(kind.value, sample, about)

    async def _refusal_loop(self) -> None:
        """Say refusals held back once their line is due, also when no more come after them."""
        while True:
            await asyncio.sleep(REFUSAL_TICK_S)
            self.refusals.flush()

    async def _watch(self, router: zmq.asyncio.Socket, mon: zmq.asyncio.Socket) -> None:
        """Say what reaches our port and never becomes a mesh connection. libzmq drops it
        without a word to the application: a failed handshake is only an event on a monitor,
        and bytes that are no ZMTP greeting at all not even that (libzmq 4.3 closes them as a
        ZMTP/1.0 peer while ZAP is on, silently), only an accept and a disconnect."""
        unshaken = _Unshaken()
        sources = SourceCounts(listening_port(self.endpoint), self.cfg.max_peers)
        # A handshake cut (its errno), said once the next event shows it was no connection we
        # cut ourselves (CROWDED): libzmq says a connection's handshake failure and then its
        # disconnect, one right after the other (stream_engine_base::error).
        cut: int | None = None
        try:
            while True:
                event = parse_monitor_message(await mon.recv_multipart())
                ev, value = int(event["event"]), int(event["value"] or 0)
                if ev == zmq.EVENT_ACCEPTED and self._shedding:
                    continue  # accepted before the port closed: closed with it, unannounced
                ours = ev == zmq.EVENT_DISCONNECTED and sources.ended(value)
                if cut is not None and not ours:
                    self.refuse(Refusal.CUT_HANDSHAKE, os.strerror(cut) if cut else "closed")
                cut = None
                if ev == zmq.EVENT_ACCEPTED and self._crowded(sources, value):
                    continue  # said as CROWDED, never as a connection without a handshake
                if unshaken.ended_unshaken(ev, value):
                    self.refuse(
                        Refusal.NO_HANDSHAKE,
                        f"bytes on {self.endpoint} that are no ZMTP/CurveZMQ greeting "
                        "(a stray client, a port scan, another protocol)",
                    )
                elif ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                    self.refuse(Refusal.BAD_HANDSHAKE, _protocol_error(value))
                elif ev == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # value: the errno
                    cut = value
                # EVENT_HANDSHAKE_FAILED_AUTH: an unknown or banned key, said by the gate with it.
                if len(unshaken.accepted) > self.cfg.max_peers + MAX_HANDSHAKING:
                    self._shed(router, unshaken)
                    sources.clear()
        finally:
            _close_monitor(router, mon)

    def _crowded(self, sources: SourceCounts, fd: int) -> bool:
        """A connection accepted on `fd`: True when its address already holds max_peers of them
        and it was cut (mesh/sources.py)."""
        address = sources.accepted(fd)
        if address is None:
            return False
        self.refuse(
            Refusal.CROWDED,
            f"{address} holds {sources.most} connections open on {self.endpoint} at once (a "
            "peer needs one): its further ones are closed as they come",
        )
        return True

    def _shed(self, router: zmq.asyncio.Socket, unshaken: _Unshaken) -> None:
        """More connections are open on our port than it holds (each one of this process's file
        descriptors, which the gateway and the ledger need too): close the port, and with it
        every connection libzmq accepted there (it says none of them on the monitor), then
        listen again after SHED_S. The monitor is read on meanwhile: unread, its queue blocks
        libzmq's I/O thread (_close_monitor)."""
        self.refuse(
            Refusal.FLOODED,
            f"{len(unshaken.accepted)} connections open on {self.endpoint} at once (the port "
            f"holds {self.cfg.max_peers + MAX_HANDSHAKING}): closed for {SHED_S:g} s, then "
            "listening again; peers reconnect then",
        )
        router.unbind(self.endpoint)
        unshaken.accepted.clear()
        self._shedding = True
        asyncio.get_running_loop().call_later(SHED_S, self._listen_again, router, unshaken)

    def _listen_again(self, router: zmq.asyncio.Socket, unshaken: _Unshaken) -> None:
        """The port closed by _shed listens again (tried again after SHED_S if it cannot)."""
        if router.closed or self._stopping:
            return
        try:
            router.bind(self.endpoint)
        except zmq.ZMQError as exc:
            log.error(
                "mesh: cannot listen on %s again (%s): trying again in %g s",
                self.endpoint,
                os.strerror(exc.errno or 0),
                SHED_S,
            )
            asyncio.get_running_loop().call_later(SHED_S, self._listen_again, router, unshaken)
            return
        unshaken.accepted.clear()  # events of connections the port's closing ended, unsaid
        self._shedding = False
        # Debug only: a flood that goes on closes the port every SHED_S, and FLOODED's paced
        # line already says the port listens again after each pause.
        log.debug("mesh: listening on %s again", self.endpoint)

    # ---- the dialers ----------------------------------------------------------------------

    def _dealer(self, peer: Peer) -> zmq.asyncio.Socket:
        assert self.ctx is not None
        s = self.ctx.socket(zmq.DEALER)
        s.curve_secretkey = self.curve_secret
        s.curve_publickey = self.curve_public
        s.curve_serverkey = peer.curve
        s.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME)
        s.setsockopt(zmq.SNDHWM, SNDHWM)
        s.setsockopt(zmq.RCVHWM, RCVHWM)
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a connection whose handshake completed
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, int(min(self.cfg.backoff_max, 5.0) * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        s.connect(peer.endpoint)
        return s

    async def _dial(self, peer: Peer) -> None:
        """Dial the peer for as long as it is ours. libzmq reconnects a connection that broke,
        but never one whose handshake failed (the peer refused our key, banned us for a while,
        or spoke no CurveZMQ): it ends that session for good. So after such a failure the
        socket is made anew, after a pause that doubles up to the reconnect interval's cap:
        a peer that lists us later, or whose ban on us ends, is met again without a restart."""
        pause = self.cfg.sync_interval
        cap = min(self.cfg.backoff_max, 5.0)  # as RECONNECT_IVL_MAX (_dealer)
        while True:
            met = await self._dial_socket(peer)  # returns once a handshake failed
            pause = self.cfg.sync_interval if met else min(pause * 2, cap)
            await asyncio.sleep(pause * random.uniform(0.8, 1.2))

    async def _dial_socket(self, peer: Peer) -> bool:
        """One socket's life: rounds with the peer until a handshake on it fails (then closed).
        True if a handshake on it had succeeded before."""
        sock = peer.sock = self._dealer(peer)
        mon = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_DISCONNECTED
        )
        ended = asyncio.Event()
        met: list[bool] = [False]
        helpers = [
            asyncio.create_task(self._read(peer, sock)),
            asyncio.create_task(self._monitor(peer, mon, ended, met)),
            asyncio.create_task(self._rounds(peer, sock)),
        ]
        waiter = asyncio.create_task(ended.wait())
        try:
            await asyncio.wait([waiter, helpers[2]], return_when=asyncio.FIRST_COMPLETED)
            if helpers[2].done():
                helpers[2].result()  # the rounds never end but by an error: raised here
            return met[0]
        finally:
            for t in [*helpers, waiter]:
                t.cancel()
            await asyncio.gather(*helpers, waiter, return_exceptions=True)
            _close_monitor(sock, mon)
            sock.close(linger=self.linger_ms)
            peer.sock = None

    async def _rounds(self, peer: Peer, sock: zmq.asyncio.Socket) -> None:
        backoff = self.cfg.sync_interval
        while True:
            if self._banned(peer):
                await asyncio.sleep(1.0)
                continue
            # (peer.more stays what the last round's heads said until this one's arrive: a
            # sync_once() that looked between the two took a catch-up half done for whole.)
            peer.heads_evt.clear()
            sent = self._send(
                sock,
                [
                    wire.SYNC,
                    wire.encode_vv(self.version_vector()),
                    wire.encode_forks(self.fork_keys()),
                    self.advertised().encode(),
                ],
                peer,
            )
            if sent:
                peer.credit = min(MAX_CREDIT, peer.credit + ROUND_CREDIT)
            got = sent and await self._await_heads(peer)
            now = time.monotonic()
            if got:
                backoff = self.cfg.sync_interval
                if peer.more:
                    continue
            elif now - max(peer.last_seen, peer.created) > self.cfg.down_after:
                if peer.state in ("up", "new"):
                    self._set_state(peer, "down", "silent")
                backoff = min(backoff * 2, self.cfg.backoff_max)
            peer.wake.clear()
            await _wait_set(peer.wake, backoff * random.uniform(0.8, 1.2))

    async def _await_heads(self, peer: Peer) -> bool:
        """Wait for the heads that close our round. While we still import what the peer sent
        before them, its silence is ours (our reader waits for room in the inbox), not a
        peer gone quiet: waiting on spares a catch-up a timeout and a backoff per round."""
        while True:
            if await _wait_set(peer.heads_evt, self.cfg.sync_interval * 2):
                return True
            if not peer.inbox_entries:
                return False

    async def _read(self, peer: Peer, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                await self._handle(peer, frames, reply=None)
            except Exception:
                log.exception("mesh: error handling a message from %s", peer.hex[:16])

    async def _monitor(
        self, peer: Peer, mon: zmq.asyncio.Socket, ended: asyncio.Event, met: list[bool]
    ) -> None:
        while True:
            event = parse_monitor_message(await mon.recv_multipart())
            ev = event["event"]
            if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                met[0] = True
                peer.wake.set()  # a (re)connection: run a round now
            elif ev in DIAL_FAILURES:
                # Paced per peer: the dialer retries every few seconds for as long as it fails.
                why = _dial_failure(ev, int(event.get("value") or 0))
                sample = f"{peer.hex[:16]} at {peer.endpoint}: {why}"
                self.refuse(Refusal.DIAL_FAILED, sample, about=peer.hex)
                if ev in SESSION_ENDING:  # a new socket will, after a pause (_dial)
                    ended.set()

    # ---- pushing new entries --------------------------------------------------------------

    def _on_stored(self, item: Entry | ForkProof) -> None:
        """Store listener (any thread): our feed grew or a fork proof arrived."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if isinstance(item, ForkProof):
            data = item.to_bytes()
            loop.call_soon_threadsafe(self._queue_proof, data)
        elif item.author == self.me:
            loop.call_soon_threadsafe(self._dirty.set)

    def _queue_proof(self, data: bytes) -> None:
        if len(self._new_proofs) < 64:
            self._new_proofs.append(data)
        self._dirty.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.002)  # coalesce a burst of appends into one batch
            self._dirty.clear()
            proofs, self._new_proofs = self._new_proofs, []
            head = self.store.head(self.me)
            for peer in list(self.peers.values()):
                sock = peer.sock
                if sock is None or peer.state != "up" or peer.banned_until:
                    continue
                if proofs:
                    self._send_proofs(sock, [], proofs, peer)
                if head is None:
                    continue
                known = peer.known.get(self.me, 0)
                if not peer.heard:
                    peer.wake.set()
                    continue
                if head.seq > known:
                    raws = self.store.raws_after(
                        self.me, known, wire.MAX_ROUND, wire.MAX_ROUND_BYTES
                    )
                    sent = self._send_entries(sock, [], raws, peer)
                    self._update_known(peer, raws[:sent])
                    if sent < len(raws) or head.seq > known + len(raws):
                        peer.wake.set()

    async def _refresh_loop(self) -> None:
        """Pick up entries other processes (the ledger CLI) committed to our data directory."""
        while True:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(self.store.refresh)

    # ---- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        ours = self.store.heads()
        peers = []
        for p in self.peers.values():
            known = {a.hex(): s for a, s in p.known.items()}
            # A feed of a key not on our allow-list that a peer holds is never ours to lack:
            # it showed as "we lack" for good (an outside tester).
            takes = {a.hex(): s for a, s in p.known.items() if self._takes(a)}
            peers.append(
                {
                    "key": p.hex,
                    "endpoint": p.endpoint,
                    "state": p.state,
                    "last_seen_wall": p.last_seen_wall or None,
                    "last_seen_ago": round(now - p.last_seen, 1) if p.last_seen else None,
                    "heard": p.heard,
                    "they_lack": sum(max(0, s - known.get(a, 0)) for a, s in ours.items())
                    if p.heard
                    else None,
                    "we_lack": sum(max(0, s - ours.get(a, 0)) for a, s in takes.items())
                    if p.heard
                    else None,
                    "strikes": p.strikes,
                    "banned": p.banned_until > now,
                    "entries_in": p.entries_in,
                    "entries_out": p.entries_out,
                    "bytes_in": p.bytes_in,
                    "bytes_out": p.bytes_out,
                    "rejected": p.rejected,
                    "last_reject": p.last_reject,
                }
            )
        return {
            "key": self.me.hex(),
            "endpoint": self.advertised(),
            "updated_wall": wall,
            "feeds": len(ours),
            "entries": self.store.count(),
            "forks": len(self.store.quarantine()),
            "peers": peers,
            "stats": self.stats.__dict__.copy(),
        }

    def write_status(self) -> None:
        if self.data_dir is None:
            return
        from gibsey.core.identity import write_atomic

        data = json.dumps(self.status(), indent=1, sort_keys=True).encode()
        try:
            write_atomic(self.data_dir / STATUS_FILENAME, data)
        except OSError:
            log.debug("mesh: could not write status", exc_info=True)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.to_thread(self.write_status)
            await asyncio.sleep(1.0)

    # ---- one-shot sync (gibsey mesh sync) -----------------------------------------------------

    async def sync_once(self, spec: PeerSpec, timeout: float = 10.0) -> Peer:
        """Run rounds with one peer until neither side has more to send; return the peer."""
        self.allowed.add(spec.key)
        self.curve_to_ed[curve_public(spec.key)] = spec.key
        peer = self.add_peer(spec.key, spec.endpoint)
        if peer is None:
            raise ValueError("cannot sync with ourselves")
        deadline = time.monotonic() + timeout
        while peer.rounds == 0 or peer.more or peer.inbox_entries:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete sync with {spec.endpoint} in {timeout}s")
            await asyncio.sleep(0.01)
        self.linger_ms = 2000  # let what we pushed leave before the sockets close
        return peer
