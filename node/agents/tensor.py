"""The Agency Tensor: how much each actor has turned each symbol at each rotation, fading.

Cells are (actor, symbol, rotation) -> weight. Every `ritual/performed` adds 1 to its cell; every
weight halves each `half_life` seconds. Decay runs on the node's *running* clock (monotonic time,
persisted across restarts): a Pi has no real-time clock, and a gallery switched off overnight
should not find everything forgotten in the morning. A cell is stored as (weight, at) and read as
`weight * 2 ** -((now - at) / half_life)`, so nothing is rewritten while the room is quiet.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from gibsey.core.storage import StorageError
from gibsey.node.agents.db import Db

SCHEMA = """
CREATE TABLE IF NOT EXISTS tensor (
    actor TEXT NOT NULL,
    symbol INTEGER NOT NULL,
    rotation INTEGER NOT NULL,
    weight REAL NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY(actor, symbol, rotation)
);
CREATE TABLE IF NOT EXISTS tensor_clock (id INTEGER PRIMARY KEY CHECK (id = 0), t REAL NOT NULL);
"""
FLOOR = 1e-3  # cells that decayed below this are dropped on the next write
PENDING_MAX = 10_000  # rituals counted in memory and not yet written, at most
# Cells kept at most: past it, each write drops the weakest (the most faded). A stranger turning
# the dial under a new name each time grew the table, and the snapshot read from it on the event
# loop, without end: 75,000 names made a 2 MB document (0.5 s of the loop), which the broker
# refused, closing the node's connection again and again.
MAX_CELLS = 4096
# The snapshot's `by_actor` names the heaviest actors, at most this many (`actors`: how many in
# all), and its document (JSON, as published) at most SNAPSHOT_MAX_BYTES: fewer cells and actors
# when their names are long (an actor is up to 256 characters, 6 bytes each escaped), so it
# stays under the broker's message limit (128 KiB) whatever the names.
SNAPSHOT_ACTORS = 200
SNAPSHOT_MAX_BYTES = 32 * 1024


@dataclass(frozen=True)
class Cell:
    actor: str
    symbol: int
    rotation: int
    weight: float


class AgencyTensor:
    def __init__(self, db: Db, half_life: float = 3600.0) -> None:
        self.db = db
        self.half_life = half_life
        self.db.create(SCHEMA)
        rows = self.db.execute("SELECT t FROM tensor_clock WHERE id = 0")
        self._base = float(rows[0][0]) if rows else 0.0
        self._started = time.monotonic()
        self.version = 0
        # Rituals counted (`note`) and not yet written (`flush`): the daemon writes them every
        # tensor_flush_interval, not at every publish - a commit every 2 s was a WAL page or
        # three per 10 turns on the SD card (gibsey bench wear). Readers see them already.
        self.pending: list[tuple[str, int, int, float]] = []

    def now(self) -> float:
        """Seconds of node running time (survives restarts, stops while the node is off)."""
        return self._base + time.monotonic() - self._started

    def _decay(self, weight: float, at: float, now: float) -> float:
        return weight * math.pow(2.0, -max(0.0, now - at) / self.half_life)

    def add(
        self, actor: str, symbol: int, rotation: int, amount: float = 1.0, now: float | None = None
    ) -> float:
        t = self.now() if now is None else now
        return self.add_many([(actor, symbol, rotation, t)], amount)[-1]

    def add_many(
        self, items: list[tuple[str, int, int, float]], amount: float = 1.0
    ) -> list[float]:
        """Add `amount` to each (actor, symbol, rotation) cell at its running time, in one
        transaction: the daemon batches rituals (one commit per batch, not per turn of the
        dial, which kept the event loop waiting on SQLite). Returns each cell's new weight.
        The batch is folded in memory first, so each cell is read and written once however
        many of its rituals the batch holds (a visitor turns the same symbol again and again:
        10,000 rituals were 20,000 statements, 60 ms of the event loop)."""
        out: list[float] = []
        if not items:
            return out
        with self.db.transaction():
            held: dict[tuple[str, int, int], tuple[float, float]] = {}
            for actor, symbol, rotation, t in items:
                key = (actor, symbol, rotation)
                old = held.get(key)
                if old is None:
                    row = self.db.execute(
                        "SELECT weight, at FROM tensor WHERE actor=? AND symbol=? AND rotation=?",
                        key,
                    )
                    old = (row[0][0], row[0][1]) if row else (0.0, t)
                weight = self._decay(old[0], old[1], t) + amount
                held[key] = (weight, t)
                out.append(weight)
            self.db.executemany(
                "INSERT OR REPLACE INTO tensor(actor, symbol, rotation, weight, at)"
                " VALUES (?,?,?,?,?)",
                [(*key, weight, t) for key, (weight, t) in held.items()],
            )
            last = max(t for *_, t in items)
            self.db.execute("INSERT OR REPLACE INTO tensor_clock(id, t) VALUES (0, ?)", (last,))
        self.version += 1
        return out

    def cells(self, now: float | None = None, actor: str | None = None) -> list[Cell]:
        t = self.now() if now is None else now
        sql = "SELECT actor, symbol, rotation, weight, at FROM tensor"
        params: tuple[Any, ...] = ()
        if actor is not None:
            sql += " WHERE actor = ?"
            params = (actor,)
        held = {
            (str(a), int(s), int(r)): (float(w), float(at))
            for a, s, r, w, at in self.db.execute(sql, params)
        }
        for a, s, r, at in self.pending:  # as add_many will write them
            if actor is None or a == actor:
                old = held.get((a, s, r))
                held[(a, s, r)] = ((self._decay(*old, at) if old else 0.0) + 1.0, at)
        out = []
        for (a, s, r), (w, at) in held.items():
            value = self._decay(w, at, t)
            if value >= FLOOR:
                out.append(Cell(str(a), int(s), int(r), value))
        out.sort(key=lambda c: -c.weight)
        return out

    def note(self, actor: str, symbol: int, rotation: int) -> None:
        """Count one ritual now, in memory: every reader sees it; `flush` writes it. A kill -9
        loses what was not flushed yet (a fading count of turns, never a turn itself)."""
        self.pending.append((actor, symbol, rotation, self.now()))
        del self.pending[:-PENDING_MAX]
        self.version += 1

    def flush(self) -> None:
        """Write what `note` counted, in one transaction; kept for the next flush if the disk
        refuses it (StorageError, raised)."""
        pending, self.pending = self.pending, []
        try:
            self.add_many(pending)
        except StorageError:
            self.pending = (pending + self.pending)[-PENDING_MAX:]
            raise
        self.prune()

    def prune(self, now: float | None = None) -> int:
        """Drop the cells faded below FLOOR, and the weakest past MAX_CELLS; how many went."""
        t = self.now() if now is None else now
        cells = [
            (self._decay(float(w), float(at), t), (a, s, r))
            for a, s, r, w, at in self.db.execute(
                "SELECT actor, symbol, rotation, weight, at FROM tensor"
            )
        ]
        cells.sort(reverse=True)
        doomed = [key for weight, key in cells[MAX_CELLS:]]
        doomed += [key for weight, key in cells[:MAX_CELLS] if weight < FLOOR]
        if doomed:
            with self.db.transaction():
                self.db.executemany(
                    "DELETE FROM tensor WHERE actor=? AND symbol=? AND rotation=?", doomed
                )
        return len(doomed)

    def snapshot(self, now: float | None = None, limit: int = 200) -> dict[str, Any]:
        """The document published (retained) for dashboards: the `limit` heaviest cells, the
        weight of each symbol, and of the SNAPSHOT_ACTORS heaviest actors (`actors`: all)."""
        return self._snapshot(now, limit)[0]

    def snapshot_json(self, now: float | None = None, limit: int = 200) -> bytes:
        """`snapshot()` as published: its JSON, encoded once (the size bound measured it)."""
        return self._snapshot(now, limit)[1].encode()

    def _snapshot(self, now: float | None, limit: int) -> tuple[dict[str, Any], str]:
        cells = self.cells(now)
        by_symbol: dict[str, float] = {}
        by_actor: dict[str, float] = {}
        for c in cells:
            by_symbol[str(c.symbol)] = by_symbol.get(str(c.symbol), 0.0) + c.weight
            by_actor[c.actor] = by_actor.get(c.actor, 0.0) + c.weight
        heaviest = sorted(by_actor.items(), key=lambda kv: -kv[1])[:SNAPSHOT_ACTORS]
        listed = max(limit, SNAPSHOT_ACTORS)
        while True:  # halved until it fits: at most log2(listed) + 1 tries
            doc = {
                "half_life_s": self.half_life,
                "clock_s": round(self.now() if now is None else now, 3),
                "cells": [
                    {
                        "actor": c.actor,
                        "symbol": c.symbol,
                        "rotation": c.rotation,
                        "weight": round(c.weight, 4),
                    }
                    for c in cells[: min(limit, listed)]
                ],
                "by_symbol": {k: round(v, 4) for k, v in by_symbol.items()},
                "by_actor": {k: round(v, 4) for k, v in heaviest[:listed]},
                "actors": len(by_actor),
            }
            text = json.dumps(doc)
            if listed == 0 or len(text) <= SNAPSHOT_MAX_BYTES:
                return doc, text
            listed //= 2


def persist_clock(tensor: AgencyTensor) -> None:
    """Record the running clock (the daemon does this periodically, so readers see decay)."""
    tensor.db.execute("INSERT OR REPLACE INTO tensor_clock(id, t) VALUES (0, ?)", (tensor.now(),))
