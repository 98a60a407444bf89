"""One `gibsey up` process run from outside: start it, wait until it is ready, talk to it, stop it.

`spawn_up` and `wait_for_file` are the one way the harness and the benchmarks (bench/nodeproc.py)
start a node and wait for it. `NodeProc` is a gallery's node: the process, its gateway (HTTP),
its ledger (read through gibsey.ledger.store, beside the running daemon or after it died), its
mesh status and `gibsey` commands run beside it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gibsey.harness.mosquitto import Mosquitto
from gibsey.harness.waiting import GalleryError, stop_process, wait_until
from gibsey.harness.watch import NodeClient
from gibsey.ledger.store import DB_FILENAME, Store

REPO = Path(__file__).resolve().parents[1]


def spawn_up(
    data: Path,
    broker_url: str,
    http: str,
    *,
    env: Mapping[str, str],
    log: Path | None = None,
    prefix: Sequence[str] = (),
    own_session: bool = False,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """`gibsey up --data DATA --broker URL --http HTTP`, with `env` as its whole environment,
    its output appended to `log` (None: discarded), behind `prefix` (netns: `ip netns exec NS`),
    in a session of its own when the caller hands out Ctrl-C itself, run by `python` (another
    interpreter: harness/card_python.py)."""
    cmd = [*prefix, python, "-m", "gibsey", "up", "--data", str(data)]
    cmd += ["--broker", broker_url, "--http", http]
    with contextlib.ExitStack() as stack:
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = stack.enter_context(open(log, "ab"))
        return subprocess.Popen(
            cmd, stdout=out, stderr=out, cwd=REPO, env=dict(env), start_new_session=own_session
        )


def children_named(parent: int, name: str) -> list[int]:
    """Living processes named `name` whose parent is `parent` (from /proc; zombies are dead):
    a node's embedded Mosquitto, its model worker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == parent and comm == name and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for_file(proc: subprocess.Popen[bytes], path: Path, timeout_s: float, what: str) -> None:
    """Wait until the node writes `path`; kill it and raise GalleryError if it dies first or
    takes longer than `timeout` seconds."""

    def written() -> bool:
        if proc.poll() is not None:
            raise GalleryError(f"{what} exited before writing {path.name}")
        return path.exists()

    try:
        wait_until(written, timeout_s, f"{what} to write {path.name}")
    except GalleryError:
        proc.kill()
        proc.wait()
        raise


@dataclass
class NodeProc:
    index: int
    data: Path
    token: str
    broker: Mosquitto
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
        self.proc = spawn_up(
            self.data,
            self.broker.url,
            self.http_listen,
            env=env,
            log=self.log_path,
            prefix=self.prefix,
            own_session=True,  # Ctrl-C in the terminal is the gallery's to hand out
        )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise GalleryError(f"{self.name}: gibsey up exited\n{self.log_tail()}")
            try:
                info = json.loads((self.data / "gateway.json").read_text())
            except (OSError, ValueError):
                return False
            self.url = str(info["url"])
            return True

        wait_until(ready, timeout_s, f"{self.name}'s gateway", step_s=0.1)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def interrupt(self, timeout_s: float = 30.0, *, signalled: bool = False) -> int | None:
        """Ctrl-C for this node (SIGINT, as the terminal would send), and wait for it.
        One SIGINT only: a second one, arriving after the daemon's clean stop, would kill the
        interpreter on its way out (exit status -2)."""
        if self.proc is None:
            return None
        rc = stop_process(self.proc, None if signalled else signal.SIGINT, timeout_s)
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
        self, method: str, path: str, body: Any = None, timeout_s: float = 15.0
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = self._error_body(exc, method, path), exc.code
        except (http.client.HTTPException, OSError) as exc:
            raise self._no_answer(method, path, exc) from exc
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def _no_answer(self, method: str, path: str, exc: BaseException) -> GalleryError:
        """A node that went away mid-answer (killed, restarting, too slow on a loaded machine)
        is the harness's ordinary GalleryError. A response cut short is http.client's
        IncompleteRead, which is no OSError: it escaped every caller and crashed `gibsey
        rehearse` when a SIGKILL scene landed during a read (issue 17)."""
        return GalleryError(f"{self.name} {method} {path}: no answer ({type(exc).__name__}: {exc})")

    def _error_body(self, exc: urllib.error.HTTPError, method: str, path: str) -> bytes:
        try:
            return exc.read()
        except (http.client.HTTPException, OSError) as cut:
            raise self._no_answer(method, path, cut) from cut

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

    def ask(self, persona: str, prompt: str, max_tokens: int = 32, timeout_s: float = 120) -> str:
        """Ask a persona through the gateway; the final answer's text (raises on an error)."""
        body = json.dumps(
            {"persona": persona, "prompt": prompt, "max_tokens": max_tokens, "actor": "visitor"}
        ).encode()
        req = urllib.request.Request(self.url + "/api/agent/ask", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        event = ""
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event in ("done", "error"):
                        doc = json.loads(line[6:])
                        if event == "error":
                            raise GalleryError(f"{self.name} ask {persona}: {doc.get('error')}")
                        return str(doc.get("text", ""))
        except urllib.error.HTTPError as exc:
            raise GalleryError(f"{self.name} ask {persona}: HTTP {exc.code}") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise self._no_answer("POST", "/api/agent/ask", exc) from exc
        raise GalleryError(f"{self.name} ask {persona}: the stream ended without an answer")

    # -- the ledger, read through its store (works while the node is down) -------------------
    @contextlib.contextmanager
    def _ledger_store(self) -> Iterator[Store | None]:
        """The node's ledger store, opened beside the daemon as `gibsey ledger` opens it (SQLite
        in WAL mode: readers never block the daemon's writes); None until the node made it (so
        reading never creates a ledger in a data directory)."""
        if not (self.data / DB_FILENAME).exists():
            yield None
            return
        store = Store.open(self.data)
        try:
            yield store
        finally:
            store.close()

    def heads(self) -> dict[str, int]:
        """{author hex: latest seq} of every feed the node holds ({} before it has a ledger)."""
        try:
            with self._ledger_store() as store:
                return {} if store is None else store.heads()
        except sqlite3.OperationalError:  # the daemon is making the file right now
            return {}

    def has_entries(self, hashes: set[str]) -> set[str]:
        """Which of these entry hashes (hex) the node's store holds."""
        with self._ledger_store() as store:
            if store is None:
                return set()
            return {h for h in hashes if store.get_by_hash(bytes.fromhex(h)) is not None}

    def entries_of_type(self, type_: str) -> list[dict[str, Any]]:
        """Every entry of this type the node holds, by author and seq, its body spread out."""
        with self._ledger_store() as store:
            held = [] if store is None else list(store.iter_ordered())
        return [
            {"author": e.author_hex, "seq": e.seq, "hash": e.hash_hex, **e.body}
            for e in sorted(held, key=lambda e: (e.author, e.seq))
            if e.type == type_
        ]

    def mesh_status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.data / "mesh-status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def peers_up(self) -> int:
        return sum(1 for p in self.mesh_status().get("peers", []) if p.get("state") == "up")

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`gibsey --data DATA ARGS...` beside the running daemon (as a technician would; in
        netns mode inside the node's namespace, where the broker is on the default port)."""
        return subprocess.run(
            [*self.prefix, sys.executable, "-m", "gibsey", "--data", str(self.data), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=dict(os.environ, COLUMNS="200"),
        )
