"""`gibsey bench tensor` (also rows of `gibsey bench agent`): the Agency Tensor's snapshot, made
on the node's event loop every `tensor_publish_interval` (2 s) while rituals are counted.

The table is full (MAX_CELLS cells, each a different name: a stranger's flood) and
TENSOR_BATCH_MAX more cells are counted and not written yet: the most a snapshot reads. Timed
in turns with the baseline, the same cells read back from SQLite alone (no decay, no sort, no
JSON), which every snapshot did before the tensor kept its copy in memory (14 ms of the loop
for a whole snapshot on this project's 2-core laptop; a dial turn arriving then waited for it).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gibsey.bench.report import Row
from gibsey.node.agents.db import Db
from gibsey.node.agents.service import TENSOR_BATCH_MAX
from gibsey.node.agents.tensor import MAX_CELLS, AgencyTensor

ROUNDS = 30


def _full(db: Db) -> AgencyTensor:
    tensor = AgencyTensor(db, half_life=3600.0)
    for i in range(MAX_CELLS):
        tensor.note(f"stranger-{i:05d}", i % 64, i % 4)
    tensor.flush()
    for i in range(TENSOR_BATCH_MAX):
        tensor.note(f"newcomer-{i:05d}", i % 64, i % 4)
    return tensor


def _ms(work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return (time.perf_counter() - t0) * 1000


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-tensor-") as tmp:
        db = Db(Path(tmp) / "agents.db")
        try:
            tensor = _full(db)
            select = "SELECT actor, symbol, rotation, weight, at FROM tensor"
            snapshot, read = [], []
            for _ in range(ROUNDS):
                snapshot.append(_ms(tensor.snapshot_json))
                read.append(_ms(lambda: db.execute(select)))
            size = len(tensor.snapshot_json())
        finally:
            db.close()
    return [
        Row(
            "tensor snapshot, full table + a batch counted",
            statistics.median(snapshot),
            statistics.median(read),
            "ms",
            note=f"{MAX_CELLS} cells stored + {TENSOR_BATCH_MAX} counted, a name each; "
            f"{size:,} B of JSON; baseline: only reading the stored cells back from SQLite, "
            "the first step of each snapshot before it kept them in memory (then decayed, "
            "sorted and encoded: 14 ms in all for 4,096 cells + 200 counted, this laptop); "
            f"medians of {ROUNDS}, in turns",
        ),
        Row("tensor snapshot, max of the runs", max(snapshot), None, "ms"),
    ]
