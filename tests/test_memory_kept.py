"""Short-term memory stays short: the node keeps the latest `[agent] memories_kept` memories.

Found in a 50-minute soak (tests: an outside tester's sweep): every persona's answer was stored
as a memory and none was ever forgotten, so agents.db grew by ~2 KiB an answer for as long as the
node ran (months on a Pi's SD card), and each question's nearest-neighbour scan with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gibsey.node.agents.config import AgentConfig
from gibsey.node.agents.db import Db
from gibsey.node.agents.memory import DIM, MemoryStore


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


def test_the_store_keeps_the_latest_and_forgets_the_oldest(tmp_path: Path) -> None:
    """Tried: 300 memories into a store that keeps 50. Must hold: the 50 latest are held, in
    both tables, and a recall never finds a forgotten one."""
    db = Db(tmp_path / "agents.db")
    store = MemoryStore(db, keep=50)
    rng = np.random.default_rng(1)
    vectors = [_unit(rng) for _ in range(300)]
    ids = [store.add("london-fox", f"memory {i}", v, actor="v") for i, v in enumerate(vectors)]
    assert store.count() == 50
    assert db.execute("SELECT count(*) FROM memory_vec")[0][0] == 50
    assert sorted(r[0] for r in db.execute("SELECT id FROM memories")) == ids[-50:]
    # The nearest to a forgotten memory's own vector is someone else, still held.
    hits = store.nearest(vectors[0], k=3, persona="london-fox")
    assert hits and all(h.id in ids[-50:] for h in hits)
    assert store.nearest(vectors[-1], k=1)[0].id == ids[-1]


def test_the_file_stays_the_size_of_what_it_keeps(tmp_path: Path) -> None:
    """Tried: 200 memories kept of 2,000 added. Must hold: the database (checkpointed) is no
    larger after the 2,000 than after the first 400: forgotten vectors' space is reused."""
    path = tmp_path / "agents.db"
    db = Db(path)
    store = MemoryStore(db, keep=200)
    rng = np.random.default_rng(2)
    for i in range(2000):
        store.add("glyph-marrow", f"memory {i} " + "x" * 300, _unit(rng))
        if i == 399:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            early = os.path.getsize(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.count() == 200
    assert os.path.getsize(path) <= early


def test_a_node_keeps_ten_thousand_by_default() -> None:
    assert AgentConfig().memories_kept == 10_000


def test_the_embedder_sends_no_telemetry_and_writes_nothing_in_home(tmp_path: Path) -> None:
    """Tried: the embedder loaded and used in a process whose HOME is empty. Must hold: nothing
    is written there (onnxruntime 1.31 made ~/.cache/Microsoft/DeveloperTools/.onnxruntime with
    a device id and an SQLite queue of telemetry events for Microsoft's collector, which grew on
    the SD card of an offline gallery: found in the soak, outside the node's data directory)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(tmp_path)
    code = (
        "from gibsey.node.agents.memory import Embedder\n"
        "e = Embedder()\n"
        "for i in range(3): e.embed_one(f'a visitor asked question {i}')\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")] == []
