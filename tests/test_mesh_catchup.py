"""A fresh node catching up a multi-feed history over real ZeroMQ, between two `gibsey mesh serve`
processes: it ends with exactly the serving node's heads, a clean `ledger verify`, every entry
carried once, and never more than the mesh's bound of entries held in memory awaiting storage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from nacl.signing import SigningKey

from gibsey.core.identity import load_or_create
from gibsey.ledger.store import Store
from gibsey.mesh.node import INBOX_ENTRIES
from tests.brokers import free_port
from tests.mesh_support import REPO, MeshProc, heads, wait_until

FEEDS = 4
PER_FEED = 2500  # 10,000 entries: several rounds, and more than INBOX_ENTRIES at once
GIFT = {"from": "london-fox", "to": "glyph-marrow", "amount": 3, "memo": "for the dial"}


def _history(data: Path, keys: list[SigningKey]) -> int:
    """FEEDS interleaved feeds of other authors in the serving node's ledger; their bytes."""
    store = Store.open(data, synchronous="OFF")
    size = 0
    try:
        for _ in range(PER_FEED // 500):
            for key in keys:
                size += sum(len(e.raw) for e in store.append_many(key, [("gift", GIFT)] * 500))
    finally:
        store.close()
    return size


def _config(data: Path, listen: str, allow: list[str], peers: list[str]) -> None:
    # The deployed rhythm (sync_interval 2 s), not the other mesh tests' fast one.
    (data / "gibsey.toml").write_text(
        "[mesh]\n"
        f'listen = "{listen}"\n'
        "beacon_port = 0\n"
        f"allow = {json.dumps(allow)}\n"
        f"peers = {json.dumps(peers)}\n"
    )


def _pair(root: Path) -> tuple[MeshProc, MeshProc, list[str], int]:
    """The serving node (holding the history) and a fresh node that has it as its one peer:
    (serving, fresh, the history's authors, the history's bytes); neither started."""
    keys = [SigningKey(bytes([0x30 + i]) * 32) for i in range(FEEDS)]
    authors = [k.verify_key.encode().hex() for k in keys]
    old, fresh = root / "old", root / "fresh"
    old_key, fresh_key = load_or_create(old).public_hex, load_or_create(fresh).public_hex
    history_bytes = _history(old, keys)
    old_ep = f"tcp://127.0.0.1:{free_port()}"
    _config(old, old_ep, [fresh_key], [])
    fresh_ep = f"tcp://127.0.0.1:{free_port()}"
    _config(fresh, fresh_ep, [*authors, old_key], [f"{old_key}@{old_ep}"])
    return (
        MeshProc(old, old_key, old_ep),
        MeshProc(fresh, fresh_key, fresh_ep),
        authors,
        history_bytes,
    )


def _caught_up(serving: MeshProc, catching: MeshProc) -> None:
    # Both hold both nodes' `members` entries too, so the heads agree once all has moved.
    wait_until(
        lambda: (
            heads(catching.data) == heads(serving.data) and len(heads(serving.data)) == FEEDS + 2
        ),
        120,
        "the fresh node holding the whole history",
    )


def _verify(data: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gibsey", "ledger", "verify", "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ok: {FEEDS * PER_FEED + 2} entries in {FEEDS + 2} feeds" in out.stdout


def test_fresh_node_catches_up_a_multi_feed_history_once_and_within_bound(
    tmp_path: Path,
) -> None:
    serving, catching, authors, history_bytes = _pair(tmp_path)
    try:
        serving.start(timeout=60)
        catching.start(timeout=60)
        _caught_up(serving, catching)
        want = FEEDS * PER_FEED + 2
        wait_until(lambda: catching.status().get("entries") == want, 10, "status")
        stats = catching.status()["stats"]
    finally:
        catching.stop()
        serving.stop()
    assert all(heads(catching.data)[a] == PER_FEED for a in authors)
    assert heads(catching.data) == heads(serving.data)
    _verify(catching.data)
    # Held in memory awaiting storage: bounded, however long the history.
    assert 0 < stats["inbox_peak"] <= INBOX_ENTRIES
    # Each entry crossed once: not once per connection of the pair (each node dials the other).
    assert stats["bytes_in"] < 1.5 * history_bytes, (stats, history_bytes)


def test_fresh_node_killed_mid_catch_up_resumes_to_the_same_heads(tmp_path: Path) -> None:
    """What the serving node sent and the killed node never stored is sent again: the node
    restarted at once (before any hold-off on what is on its way could lapse) resumes from
    what it holds, and nothing it stored is lost."""
    serving, catching, authors, _ = _pair(tmp_path)
    try:
        serving.start(timeout=60)
        catching.start(timeout=60)
        wait_until(lambda: sum(heads(catching.data).values()) > 2000, 120, "a part caught up")
        catching.stop(signal.SIGKILL)
        held = heads(catching.data)
        assert sum(held.values()) < FEEDS * PER_FEED  # killed mid-catch-up
        catching.start(timeout=60)
        _caught_up(serving, catching)
    finally:
        catching.stop()
        serving.stop()
    assert all(heads(catching.data)[a] == PER_FEED for a in authors)
    assert all(heads(catching.data)[a] >= s for a, s in held.items())
    _verify(catching.data)
