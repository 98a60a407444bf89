"""A persona's nearest memories from sqlite-vec's vec0 KNN are the exact ones: the same as NumPy's
brute force over the same float32 vectors, with and without the persona's filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gibsey.node.agents.db import Db
from gibsey.node.agents.memory import DIM, MemoryStore

N = 3000
K = 5


def _unit(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((rows, DIM)).astype(np.float32)
    unit: np.ndarray = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return unit


def test_nearest_is_numpy_brute_force_on_float32(tmp_path: Path) -> None:
    vecs = _unit(N, 7)
    personas = ["london-fox" if i % 3 else "glyph-marrow" for i in range(N)]
    store = MemoryStore(Db(tmp_path / "agents.db"))
    store.add_many([(p, f"m{i}", vecs[i]) for i, p in enumerate(personas)])  # ids 1..N
    mine = np.array([p == "glyph-marrow" for p in personas])
    for q in _unit(10, 11):
        scores = vecs @ q
        everyone = [int(i) + 1 for i in np.argsort(-scores)[:K]]
        hits = store.nearest(q, k=K)
        assert [h.id for h in hits] == everyone
        np.testing.assert_allclose(
            [h.distance for h in hits], 1 - scores[np.array(everyone) - 1], atol=1e-5
        )
        only = np.where(mine, scores, -np.inf)
        theirs = [int(i) + 1 for i in np.argsort(-only)[:K]]
        assert [h.id for h in store.nearest(q, k=K, persona="glyph-marrow")] == theirs
