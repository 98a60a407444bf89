"""A gallery on one machine: N complete nodes, their brokers, their mesh links, their dials.

Each node is a real `gibsey up` process with its own data directory (identity, ledger, story,
agents), its own Mosquitto (a Pi in a room runs its own broker, so one node's load never lands
on another's spine, and the mesh is the only path between nodes, as in a gallery), its own
gateway (DATA/gateway.json) and its own mesh endpoint. The room's network is one of two:

- `loopback` (any user): everything on 127.0.0.1, on free ports. Mesh links go through small
  TCP relays run by this process, one per ordered pair of nodes (node i dials node j at relay
  (i, j), which forwards to j's real endpoint). Cutting a node's relays partitions it from the
  room while every daemon keeps running; healing opens them again. CurveZMQ runs end to end
  through the relays.
- `netns` (root): each node's `gibsey up` and Mosquitto run inside a network namespace of its
  own (gibsey.mesh.netns), joined to the others by a bridge: the mesh endpoint listens on
  10.77.0.<i>:7470 and peers dial each other there, with nothing in between. The daemon reaches
  its broker on 127.0.0.1:1883 inside its namespace (as on a Pi, and so do `gibsey` commands run
  beside it); this process reaches the broker and the gateway (:8080) over the node's host link,
  a point-to-point veth that leads nowhere else, so the live view and the report keep reading
  a node while it is partitioned. A partition sets the node's bridge port down.

`choose_net("auto")` picks netns when running as root where `ip netns` works, else loopback.

Used by `gibsey rehearse`, `gibsey bench rehearse` and tests/test_acceptance.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gibsey.core.identity import load_or_create
from gibsey.dialcore import frame as df
from gibsey.harness.ports import free_port
from gibsey.ledger.store import DB_FILENAME
from gibsey.mesh import netns
from gibsey.node.dial.bridge import frame_topic

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[1]


class GalleryError(RuntimeError):
    pass


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `pred` until it returns something true; GalleryError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise GalleryError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# ---- the room's network ------------------------------------------------------------------

NETS = ("auto", "netns", "loopback")
MESH_PORT = 7470  # in netns mode every node has ports of its own: the usual ones
BROKER_PORT = 1883
GATEWAY_PORT = 8080


def choose_net(wanted: str) -> tuple[str, str]:
    """(net, why): the network a gallery runs on for `--net wanted`, and the reason in words.
    GalleryError when netns is asked for and cannot be had."""
    if wanted not in NETS:
        raise GalleryError(f"--net {wanted!r}: expected one of {', '.join(NETS)}")
    if wanted == "loopback":
        return "loopback", "asked for (--net loopback)"
    why_not = netns.unavailable()
    if wanted == "netns":
        if why_not:
            raise GalleryError(f"--net netns: {why_not}")
        return "netns", "asked for (--net netns)"
    if why_not:
        return "loopback", f"auto: {why_not}"
    return "netns", "auto: running as root and `ip netns` works"


def describe_net(net: str) -> str:
    """One line on what the network of a gallery is, for the live view and the report."""
    if net == "netns":
        return (
            f"netns: one network namespace per node, mesh on a bridge ({netns.MESH_SUBNET}.0/24,"
            f" port {MESH_PORT}); broker and gateway reached over per-node host links"
        )
    return "loopback: mesh over 127.0.0.1 through relays run by the rehearsal"


# ---- the broker ------------------------------------------------------------------------------


class Broker:
    """Mosquitto as the image configures it (TCP_NODELAY): on 127.0.0.1:<free port>, or (netns)
    inside the node's namespace on 127.0.0.1:1883 and the node's host-link address."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.hosts = ["127.0.0.1"]  # where it listens; the first is the daemon's, the last ours
        self.prefix: list[str] = []  # the command prefix (netns: `ip netns exec NS`)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"

    def in_netns(self, prefix: list[str], host: str) -> None:
        self.prefix, self.port, self.hosts = prefix, BROKER_PORT, ["127.0.0.1", host]

    @property
    def url(self) -> str:
        """Where the node's daemon (and a `gibsey` command beside it) reaches the broker."""
        return f"mqtt://{self.hosts[0]}:{self.port}"

    @property
    def host(self) -> str:
        """Where this process reaches the broker."""
        return self.hosts[-1]

    def start(self) -> Broker:
        if not Path(MOSQUITTO).exists():
            raise GalleryError("mosquitto is not installed (apt-get install mosquitto)")
        listeners = "".join(f"listener {self.port} {h}\n" for h in self.hosts)
        self.conf.write_text(
            f"{listeners}allow_anonymous true\nset_tcp_nodelay true\n"
            "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            "max_queued_messages 100000\n"
        )
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, MOSQUITTO, "-c", str(self.conf)],
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C in the terminal is ours to hand out
            )
        wait_until(
            lambda: _port_open(self.port, self.host), 10, f"mosquitto on {self.host}:{self.port}"
        )
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---- mesh links (TCP relays) --------------------------------------------------------------


@dataclass
class _Relay:
    src: int
    dst: int
    target: int
    port: int
    server: asyncio.base_events.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class Links:
    """TCP relays between nodes, on an asyncio loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="links", daemon=True)
        self.thread.start()
        self.relays: dict[tuple[int, int], _Relay] = {}
        self.cut: set[int] = set()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, src: int, dst: int, target_port: int) -> int:
        relay = _Relay(src, dst, target_port, free_port())
        self.relays[(src, dst)] = relay
        self._call(self._listen(relay))
        return relay.port

    def blocked(self, relay: _Relay) -> bool:
        return relay.src in self.cut or relay.dst in self.cut

    async def _listen(self, relay: _Relay) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.blocked(relay):
                writer.close()
                return
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", relay.target)
            except OSError:
                writer.close()
                return
            relay.writers.update((writer, up_w))

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    w.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
            relay.writers.difference_update((writer, up_w))

        relay.server = await asyncio.start_server(handle, "127.0.0.1", relay.port)

    async def _sever(self, node: int) -> None:
        for relay in self.relays.values():
            if relay.src == node or relay.dst == node:
                for w in list(relay.writers):
                    w.close()
                relay.writers.clear()

    def partition(self, node: int) -> None:
        """Cut every link to and from `node` (open connections are dropped)."""
        self.cut.add(node)
        self._call(self._sever(node))

    def heal(self, node: int) -> None:
        self.cut.discard(node)

    async def _close(self) -> None:
        for relay in self.relays.values():
            if relay.server is not None:
                relay.server.close()
            for w in relay.writers:
                w.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---- one node's MQTT client: the virtual dial and the event tap ---------------------------


@dataclass
class Counts:
    frames: int = 0
    frames_acked: int = 0
    rotations: int = 0
    rituals: int = 0
    throttled: int = 0
    mints: int = 0
    gifts: int = 0
    answers: int = 0
    requests: int = 0
    merges: int = 0
    rebirths: int = 0
    alerts: int = 0
    events: int = 0


class NodeClient:
    """A paho client on a node's broker: publishes dial frames exactly as a Pico W does
    (hello, then R frames with sequence numbers and CRCs on .../dial/<id>/frame), and taps the
    node's events (counts per kind, dial frame -> ritual latency, acknowledged entries)."""

    def __init__(
        self, node_id: str, port: int, dial_id: str = "rehearsal", host: str = "127.0.0.1"
    ) -> None:
        self.node_id = node_id
        self.dial_id = dial_id
        self.topic = frame_topic(node_id, dial_id)
        self.counts = Counts()
        self.lock = threading.Lock()
        self.latencies: deque[float] = deque(maxlen=100_000)
        self._sent: deque[float] = deque()  # publish times of R frames awaiting their ritual
        self.entries: set[str] = set()  # ledger entry hashes the node announced (gift/txn)
        self.kinds: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []  # kept only when keep_events
        self.keep_events = False
        self._acked: set[int] = set()
        self._mids: dict[int, int] = {}  # mid -> frame seq
        self.seq = 0
        self.position = 0
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"rehearse-{node_id}-{secrets.token_hex(3)}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise GalleryError(f"cannot connect to the broker of {node_id} at {host}:{port}")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        client.subscribe(f"gibsey/v1/{self.node_id}/+/+", qos=1)
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any = None, _p: Any = None) -> None:
        with self.lock:
            if mid in self._mids:
                self._mids.pop(mid)
                self.counts.frames_acked += 1

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        kind = "/".join(msg.topic.split("/")[3:5])
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        payload = event.get("payload") or {}
        with self.lock:
            c = self.counts
            c.events += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if self.keep_events:
                self.events.append(event)
            if kind == "glyph/rotated":
                c.rotations += 1
            elif kind == "ritual/performed":
                if event.get("actor") == "dial" and self._sent:
                    self.latencies.append(now - self._sent.popleft())
                if str(payload.get("error", "")).startswith("throttled"):
                    c.throttled += 1
                else:
                    c.rituals += 1
            elif kind == "gift/txn":
                entry = payload.get("entry")
                if isinstance(entry, str) and len(entry) == 64:
                    self.entries.add(entry)
                if payload.get("type") == "mint":
                    c.mints += 1
                elif payload.get("type") == "gift":
                    c.gifts += 1
            elif kind == "agent/request":
                c.requests += 1
            elif kind == "agent/emit" and payload.get("final"):
                c.answers += 1
            elif kind == "narrative/change" and payload.get("change") == "merge":
                c.merges += 1
            elif kind == "ritual/rebirth":
                c.rebirths += 1
            elif kind == "safety/alert":
                c.alerts += 1

    def _publish_frame(self, line: str, rotate: bool) -> None:
        with self.lock:
            if rotate:
                self._sent.append(time.perf_counter())
            info = self.client.publish(self.topic, line, qos=1)
            self.counts.frames += 1
            self._mids[info.mid] = self.seq

    def hello(self, symbol: int = 0, rotation: int = 0) -> None:
        """The board's boot hello: resets the bridge's sequence tracking for this dial."""
        self.seq = 0
        self._publish_frame(
            df.hello(self.seq, self.dial_id, "rehearsal", symbol, rotation, True), False
        )
        self.seq += 1

    def turn(self, symbol: int, rotation: int) -> None:
        """One detent: an R frame, as the firmware sends it."""
        self.position += 1
        self._publish_frame(df.rotate(self.seq, symbol, rotation, self.position), True)
        self.seq += 1

    def reset_latency(self) -> None:
        """Forget unanswered frames (after a node restart, their rituals never come)."""
        with self.lock:
            self._sent.clear()

    def snapshot(self) -> Counts:
        with self.lock:
            return Counts(**self.counts.__dict__)

    def all_acked(self) -> bool:
        with self.lock:
            return not self._mids

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


# ---- one node ------------------------------------------------------------------------------


@dataclass
class NodeProc:
    index: int
    data: Path
    token: str
    broker: Broker
    mesh_port: int
    node_id: str = ""
    key: str = ""
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    restarts: int = 0
    client: NodeClient | None = None
    started_at: float = 0.0
    prefix: list[str] = field(default_factory=list)  # netns: `ip netns exec NS` runs it there
    http_listen: str = "127.0.0.1:0"  # the gateway's --http address

    @property
    def name(self) -> str:
        return f"n{self.index + 1}"

    @property
    def log_path(self) -> Path:
        return self.data / "up.log"

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data / "gateway.json").unlink()
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160")
        env.pop("GIBSEY_HTTP", None)
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "gibsey",
            "up",
            "--data",
            str(self.data),
            "--broker",
            self.broker.url,
            "--http",
            self.http_listen,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, cwd=REPO, env=env, start_new_session=True
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise GalleryError(f"{self.name}: gibsey up exited\n{self.log_tail()}")
            try:
                info = json.loads((self.data / "gateway.json").read_text())
            except (OSError, ValueError):
                return False
            self.url = str(info["url"])
            return True

        wait_until(ready, timeout, f"{self.name}'s gateway", step=0.1)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def interrupt(self, timeout: float = 30.0, *, signalled: bool = False) -> int | None:
        """Ctrl-C for this node (SIGINT, as the terminal would send), and wait for it.
        One SIGINT only: a second one, arriving after the daemon's clean stop, would kill the
        interpreter on its way out (exit status -2)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if not signalled:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> int:
        """SIGKILL the daemon (a power cut for this process); returns the dead pid."""
        assert self.proc is not None
        pid = self.proc.pid
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        return pid

    def rss_kib(self) -> int:
        """Resident memory of the daemon (KiB), its agent worker not included."""
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    # -- the gateway (HTTP) ------------------------------------------------------------------
    def http(
        self, method: str, path: str, body: Any = None, timeout: float = 15.0
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, doc = self.http("GET", path)
        if status != 200:
            raise GalleryError(f"{self.name} GET {path}: {status} {doc}")
        return doc

    def balances(self) -> dict[str, int]:
        return dict(self.get("/api/ledger/balances")["balances"])

    def proposals(self) -> list[dict[str, Any]]:
        return list(self.get("/api/ledger/proposals?all=true"))

    def gift(self, giver: str, receiver: str, amount: int = 1) -> tuple[int, Any]:
        return self.http(
            "POST", "/api/ledger/gift", {"giver": giver, "receiver": receiver, "amount": amount}
        )

    def vote(self, proposal: str, actor: str, choice: str = "yes") -> tuple[int, Any]:
        return self.http(
            "POST", f"/api/ledger/proposals/{proposal}/votes", {"actor": actor, "choice": choice}
        )

    def graphql(self, query: str) -> dict[str, Any]:
        status, doc = self.http("POST", "/graphql", {"query": query})
        if status != 200 or not isinstance(doc, dict) or doc.get("errors"):
            raise GalleryError(f"{self.name} graphql: {status} {doc}")
        return dict(doc["data"])

    def story_graph(self) -> dict[str, Any]:
        """What the node's story graph holds: branches, hearings, actors, edge counts."""
        doc = self.graphql(
            "{ branches { name head base createdBy } hearings { proposal target branch status }"
            " actors { name commits } edges { src kind dst } }"
        )
        return {
            "branches": sorted((b["name"], b["head"], b["base"]) for b in doc["branches"]),
            "hearings": sorted((h["proposal"], h["status"]) for h in doc["hearings"]),
            "actors": sorted((a["name"], a["commits"]) for a in doc["actors"]),
            "edges": sorted((e["src"], e["kind"], e["dst"]) for e in doc["edges"]),
        }

    def ask(self, persona: str, prompt: str, max_tokens: int = 32, timeout: float = 120) -> str:
        """Ask a persona through the gateway; the final answer's text (raises on an error)."""
        body = json.dumps(
            {"persona": persona, "prompt": prompt, "max_tokens": max_tokens, "actor": "visitor"}
        ).encode()
        req = urllib.request.Request(self.url + "/api/agent/ask", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        event = ""
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("done", "error"):
                    doc = json.loads(line[6:])
                    if event == "error":
                        raise GalleryError(f"{self.name} ask {persona}: {doc.get('error')}")
                    return str(doc.get("text", ""))
        raise GalleryError(f"{self.name} ask {persona}: the stream ended without an answer")

    # -- the ledger, read straight from SQLite (works while the node is down) ----------------
    def heads(self) -> dict[str, int]:
        path = self.data / DB_FILENAME
        if not path.exists():
            return {}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT author, MAX(seq) FROM entries GROUP BY author").fetchall()
        except sqlite3.OperationalError:
            return {}
        finally:
            db.close()
        return {a.hex(): int(s) for a, s in rows}

    def has_entries(self, hashes: set[str]) -> set[str]:
        """Which of these entry hashes (hex) the node's store holds."""
        path = self.data / DB_FILENAME
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            found = set()
            for h in hashes:
                row = db.execute(
                    "SELECT 1 FROM entries WHERE hash = ?", (bytes.fromhex(h),)
                ).fetchone()
                if row:
                    found.add(h)
            return found
        finally:
            db.close()

    def entries_of_type(self, type_: str) -> list[dict[str, Any]]:
        path = self.data / DB_FILENAME
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT author, seq, raw FROM entries ORDER BY author, seq"
            ).fetchall()
        finally:
            db.close()
        from gibsey.ledger.entry import parse

        out = []
        for _a, _s, raw in rows:
            e = parse(raw, verify=False)
            if e.type == type_:
                out.append({"author": e.author_hex, "seq": e.seq, "hash": e.hash_hex, **e.body})
        return out

    def mesh_status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.data / "mesh-status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def peers_up(self) -> int:
        return sum(1 for p in self.mesh_status().get("peers", []) if p.get("state") == "up")

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`gibsey --data DATA ARGS...` beside the running daemon (as a technician would; in
        netns mode inside the node's namespace, where the broker is on the default port)."""
        return subprocess.run(
            [*self.prefix, sys.executable, "-m", "gibsey", "--data", str(self.data), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, COLUMNS="200"),
        )


# ---- the gallery ---------------------------------------------------------------------------


@dataclass
class GalleryConfig:
    nodes: int = 3
    # [mesh] timing: rehearsals want convergence in seconds, not the production defaults
    sync_interval: float = 0.5
    down_after: float = 2.0
    backoff_max: float = 2.0
    # [agent]: a persona answers briefly; rotations per second per actor before throttling
    agent: dict[str, Any] = field(
        default_factory=lambda: {"max_tokens": 24, "threads": 1, "memory": False}
    )
    # the room's network: "loopback" (relays on 127.0.0.1) or "netns" (root; see the docstring)
    net: str = "loopback"


class Gallery:
    """N nodes on this machine. start() brings them all up and meshed; stop() is Ctrl-C.

    In netns mode start() first removes what killed runs left behind (netns.sweep()), then
    makes the room's namespaces; stop() removes them, even when a node would not stop."""

    def __init__(self, root: Path, config: GalleryConfig | None = None) -> None:
        self.root = root
        self.config = config or GalleryConfig()
        self.net = self.config.net
        if self.net not in ("loopback", "netns"):
            raise GalleryError(f"net {self.net!r}: expected loopback or netns")
        self.links: Links | None = Links() if self.net == "loopback" else None
        self.room: netns.Room | None = None
        if self.net == "netns":
            try:
                self.room = netns.Room(self.config.nodes)
            except netns.NetnsError as exc:
                raise GalleryError(str(exc)) from exc
        self.swept: list[str] = []  # leftovers of killed runs removed at start (netns)
        self.cut: set[int] = set()  # nodes partitioned now
        self.nodes: list[NodeProc] = []
        root.mkdir(parents=True, exist_ok=True)
        n = self.config.nodes
        for i in range(n):
            data = root / f"n{i + 1}"
            data.mkdir(parents=True, exist_ok=True)
            identity = load_or_create(data)
            node = NodeProc(
                index=i,
                data=data,
                token=secrets.token_hex(16),
                broker=Broker(root / f"n{i + 1}-mosquitto"),
                mesh_port=free_port() if self.room is None else MESH_PORT,
            )
            node.node_id, node.key = identity.node_id, identity.public_hex
            self.nodes.append(node)
        for a in self.nodes:
            peers = []
            for b in self.nodes:
                if a is b:
                    continue
                if self.links is not None:
                    port = self.links.add(a.index, b.index, b.mesh_port)
                    peers.append(f"{b.key}@tcp://127.0.0.1:{port}")
                else:
                    peers.append(f"{b.key}@tcp://{self.mesh_host(b)}:{b.mesh_port}")
            self._write_config(a, peers)

    def room_prefix(self) -> str:
        """What the names of this run's namespaces begin with ("" on loopback)."""
        return self.room.prefix if self.room is not None else ""

    def leftovers(self) -> list[str]:
        """This run's namespaces and host links still present (after stop(): none)."""
        return netns.leftovers(self.room.run) if self.room is not None else []

    def mesh_host(self, node: NodeProc) -> str:
        """The address node's mesh endpoint listens on."""
        return "127.0.0.1" if self.room is None else self.room.mesh_addr(node.index)

    def _write_config(self, node: NodeProc, peers: list[str]) -> None:
        cfg = self.config
        allow = [b.key for b in self.nodes if b is not node]
        lines = [
            "[mesh]",
            f'listen = "tcp://{self.mesh_host(node)}:{node.mesh_port}"',
            "beacon_port = 0",
            f"sync_interval = {cfg.sync_interval}",
            f"down_after = {cfg.down_after}",
            f"backoff_max = {cfg.backoff_max}",
            "allow = " + json.dumps(allow),
            "peers = " + json.dumps(peers),
            "",
            "[gateway]",
            f'token = "{node.token}"',
            "",
            "[dial]",
            'serial = "off"',
            "",
            "[agent]",
        ]
        for k, v in cfg.agent.items():
            lines.append(f"{k} = {json.dumps(v)}")
        (node.data / "gibsey.toml").write_text("\n".join(lines) + "\n")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        if self.room is not None:
            self.swept = netns.sweep()
            try:
                self.room.create()
            except netns.NetnsError as exc:
                raise GalleryError(f"cannot make the network namespaces: {exc}") from exc
            for node in self.nodes:
                node.prefix = self.room.exec_prefix(node.index)
                node.http_listen = f"{self.room.node_addr(node.index)}:{GATEWAY_PORT}"
                node.broker.in_netns(node.prefix, self.room.node_addr(node.index))
        for node in self.nodes:
            node.broker.start()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready(timeout)
            node.client = NodeClient(node.node_id, node.broker.port, host=node.broker.host)
            node.client.hello()

    def meshed(self) -> bool:
        want = len(self.nodes) - 1
        return all(n.peers_up() >= want for n in self.nodes)

    def stop(self) -> dict[str, int | None]:
        """Ctrl-C: SIGINT to every `gibsey up` (all at once), wait for them, then the brokers;
        last the relays or the namespaces (whatever happened before)."""
        try:
            for node in self.nodes:
                if node.alive():
                    assert node.proc is not None
                    node.proc.send_signal(signal.SIGINT)
            codes = {node.name: node.interrupt(signalled=True) for node in self.nodes}
            for node in self.nodes:
                if node.client is not None:
                    node.client.close()
                    node.client = None
                node.broker.stop()
        finally:
            if self.links is not None:
                self.links.close()
            if self.room is not None:
                self.room.remove()
        return codes

    def kill(self, i: int) -> int:
        node = self.nodes[i]
        pid = node.kill()
        if node.client is not None:
            node.client.reset_latency()
        return pid

    def restart(self, i: int, timeout: float = 90.0) -> None:
        node = self.nodes[i]
        if node.alive():
            node.interrupt()
        node.start()
        node.restarts += 1
        node.wait_ready(timeout)
        if node.client is not None:
            node.client.reset_latency()
            node.client.hello()

    def partition(self, i: int) -> None:
        """Cut node i off the mesh (its relays, or its bridge port); its daemon keeps running."""
        if self.room is not None:
            self._netns(self.room.cut, i)
        elif self.links is not None:
            self.links.partition(i)
        self.cut.add(i)

    def heal(self, i: int) -> None:
        if self.room is not None:
            self._netns(self.room.mend, i)
        elif self.links is not None:
            self.links.heal(i)
        self.cut.discard(i)

    @staticmethod
    def _netns(fn: Callable[[int], None], i: int) -> None:
        try:
            fn(i)
        except netns.NetnsError as exc:
            raise GalleryError(str(exc)) from exc

    def heal_all(self) -> None:
        for i in sorted(self.cut):
            self.heal(i)

    # -- the room's state -------------------------------------------------------------------
    def heads(self) -> list[dict[str, int]]:
        return [n.heads() for n in self.nodes]

    def converged(self) -> bool:
        hs = self.heads()
        return bool(hs[0]) and all(h == hs[0] for h in hs)

    def behind(self) -> list[int]:
        """Per node: how many entries the room holds that this node does not (mesh lag)."""
        hs = self.heads()
        union: dict[str, int] = {}
        for h in hs:
            for a, s in h.items():
                union[a] = max(union.get(a, 0), s)
        return [sum(s - h.get(a, 0) for a, s in union.items()) for h in hs]

    def __iter__(self) -> Iterator[NodeProc]:
        return iter(self.nodes)
