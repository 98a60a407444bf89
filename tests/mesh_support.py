"""Mesh test helpers: node data directories, `gibsey mesh serve` processes, reading stores."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gibsey.core.identity import load_or_create
from gibsey.harness.ports import free_port
from gibsey.harness.waiting import stop_process
from gibsey.harness.waiting import wait_until as wait_until  # re-exported
from gibsey.ledger.store import DB_FILENAME, Store
from gibsey.ledger.view import build
from gibsey.mesh.config import MeshConfig, PeerSpec
from gibsey.mesh.netns import exec_prefix

REPO = Path(__file__).resolve().parent.parent


@dataclass
class MeshProc:
    data: Path
    key: str
    endpoint: str
    netns: str | None = None
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> MeshProc:
        cmd = [sys.executable, "-m", "gibsey", "mesh", "serve", "--data", str(self.data)]
        cmd += self.extra
        if self.netns:
            cmd = [*exec_prefix(self.netns), *cmd]
        log = open(self.data / "serve.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO, env=env)
        log.close()
        wait_until(
            lambda: b"mesh: serving" in (self.data / "serve.log").read_bytes() or self._died(),
            timeout,
            f"mesh serve on {self.data}",
        )
        assert self.proc.poll() is None, self.log()
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return (self.data / "serve.log").read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, sig)
        self.proc = None

    def status(self) -> dict[str, Any]:
        path = self.data / "mesh-status.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def peer_state(self, key: str) -> str:
        for p in self.status().get("peers", []):
            if p["key"] == key:
                return str(p["state"])
        return ""


def make_nodes(
    root: Path,
    hosts: Sequence[str],
    ports: Sequence[int],
    *,
    mesh: dict[str, Any] | None = None,
    peers: bool = True,
    allow_extra: Sequence[str] = (),
) -> list[MeshProc]:
    """Data directories with identities and a [mesh] section: everyone peers with everyone."""
    dirs = [root / f"node{i}" for i in range(len(hosts))]
    keys = [load_or_create(d).public_hex for d in dirs]
    eps = [f"tcp://{h}:{p}" for h, p in zip(hosts, ports, strict=True)]
    out = []
    for i, d in enumerate(dirs):
        lines = [
            "[mesh]",
            f'listen = "{eps[i]}"',
            "beacon_port = 0",
            "sync_interval = 0.5",
            "down_after = 2.0",
            "backoff_max = 2.0",
        ]
        for k, v in (mesh or {}).items():
            lines.append(f"{k} = {json.dumps(v)}")
        allow = [k for j, k in enumerate(keys) if j != i] + list(allow_extra)
        lines.append("allow = " + json.dumps(allow))
        if peers:
            lines.append(
                "peers = " + json.dumps([f"{keys[j]}@{eps[j]}" for j in range(len(dirs)) if j != i])
            )
        (d / "gibsey.toml").write_text("\n".join(lines) + "\n")
        out.append(MeshProc(d, keys[i], eps[i]))
    return out


def heads(data: Path, *, trusted: bool = True) -> dict[str, int]:
    """author hex -> seq, read straight from the node's SQLite (another process may write).

    trusted: feeds of an author who equivocated are cut before the earliest fork point held
    (entries from there on are quarantined, never relayed, and count for nothing)."""
    path = data / DB_FILENAME
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT author, MAX(seq) FROM entries GROUP BY author").fetchall()
        forks = dict(db.execute("SELECT author, MIN(seq) FROM forks GROUP BY author").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    out = {}
    for a, s in rows:
        if trusted and a in forks:
            s = min(s, forks[a] - 1)
        if s:
            out[a.hex()] = s
    return out


def fork_count(data: Path) -> int:
    path = data / DB_FILENAME
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT COUNT(*) FROM forks").fetchone()[0])
    finally:
        db.close()


def append_mints(data: Path, n: int, actor: str = "london-fox") -> None:
    """Append n mints to the node's own feed from this (test) process, as the CLI would."""
    key = load_or_create(data).signing_key
    store = Store.open(data)
    try:
        store.append_many(key, [("mint", {"actor": actor, "amount": 1, "ritual": "read"})] * n)
    finally:
        store.close()


def balances(data: Path) -> dict[str, int]:
    store = Store.open(data)
    try:
        view = build(store.iter_ordered(), store.quarantine())
        return dict(view.economy.balances)
    finally:
        store.close()


def converged(nodes: Sequence[MeshProc], expect: dict[str, int] | None = None) -> bool:
    hs = [heads(n.data) for n in nodes]
    if expect is not None and hs[0] != expect:
        return False
    return all(h == hs[0] for h in hs) and bool(hs[0])


def quick_mesh_config(peers: list[PeerSpec], allow: set[bytes]) -> MeshConfig:
    """An in-process mesh node's configuration on loopback: no beacon, a fast sync, a peer called
    down quickly, so a test's nodes meet and part in fractions of a second."""
    cfg = MeshConfig(
        listen=f"tcp://127.0.0.1:{free_port()}",
        beacon_port=0,
        sync_interval=0.05,
        down_after=1.0,
        backoff_max=0.2,
    )
    cfg.peers = peers
    cfg.allow = allow
    return cfg


def public_key_hex(seed: int) -> str:
    """A real ed25519 public key (64 hex digits), the same for the same seed: a node's mesh
    configuration refuses 64 hex digits that are no point of the curve (mesh/config.py)."""
    from nacl.signing import SigningKey

    return SigningKey(bytes([seed]) * 32).verify_key.encode().hex()
