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
from collections import defaultdict
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

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
# Cells counted in memory and not yet written, at most (the daemon writes them long before, at
# TENSOR_BATCH_MAX: node/agents/service.py); past it, while a full disk refuses the writes, a
# ritual on a cell not among them is not counted.
PENDING_MAX = 10_000
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


Key = tuple[str, int, int]  # (actor, symbol, rotation)


class AgencyTensor:
    """The table, and its copy in memory (`_stored`: at most MAX_CELLS cells once written, a few
    hundred KB), from which every read is made: the snapshot, published every couple of seconds
    on the event loop, read the whole table back from SQLite and made an object per cell, 14 ms
    of the loop for a full table on this project's 2-core laptop (a dial turn arriving then
    waited for it), and a write read each cell it changed. SQLite stays the store: the copy is
    loaded from it at start, and changed only after a write to it committed."""

    def __init__(self, db: Db, half_life: float = 3600.0) -> None:
        self.db = db
        self.half_life = half_life
        self.db.create(SCHEMA)
        rows = self.db.execute("SELECT t FROM tensor_clock WHERE id = 0")
        self._base = float(rows[0][0]) if rows else 0.0
        self._started = time.monotonic()
        self.version = 0
        # The cells rituals counted (`note`) changed and not yet written (`flush`), each as it
        # will be written (weight, at): the daemon writes them every tensor_flush_interval, not
        # at every publish - a commit every 2 s was a WAL page or three per 10 turns on the SD
        # card (gibsey bench wear). Readers see them already.
        self.pending: dict[Key, tuple[float, float]] = {}
        self._stored: dict[Key, tuple[float, float]] = {
            (str(a), int(s), int(r)): (float(w), float(at))
            for a, s, r, w, at in self.db.execute(
                "SELECT actor, symbol, rotation, weight, at FROM tensor"
            )
        }

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
        The batch is folded in memory first, so each cell is written once however many of its
        rituals the batch holds (a visitor turns the same symbol again and again: 10,000
        rituals were 20,000 statements, 60 ms of the event loop)."""
        out: list[float] = []
        if not items:
            return out
        held: dict[Key, tuple[float, float]] = {}
        for actor, symbol, rotation, t in items:
            key = (actor, symbol, rotation)
            weight = self._decay(*(held.get(key) or self._latest(key, t)), t) + amount
            held[key] = (weight, t)
            out.append(weight)
        self._write(held)
        for key in held:  # written with them: counted once
            self.pending.pop(key, None)
        return out

    def _latest(self, key: Key, t: float) -> tuple[float, float]:
        """A cell as it is now (weight, at): counted and not yet written, or stored, or new."""
        return self.pending.get(key) or self._stored.get(key) or (0.0, t)

    def _write(self, cells: dict[Key, tuple[float, float]]) -> None:
        """Store these cells and the running clock (the latest `at` of theirs) in one
        transaction; the copy in memory follows once it committed."""
        with self.db.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO tensor(actor, symbol, rotation, weight, at)"
                " VALUES (?,?,?,?,?)",
                [(*key, weight, t) for key, (weight, t) in cells.items()],
            )
            last = max(t for _, t in cells.values())
            self.db.execute("INSERT OR REPLACE INTO tensor_clock(id, t) VALUES (0, ?)", (last,))
        self._stored.update(cells)
        self.version += 1

    def _weights(
        self, now: float, actor: str | None = None, pending: bool = True
    ) -> list[tuple[float, Key]]:
        """(weight now, cell) of every cell at or above FLOOR, the pending rituals counted as
        add_many will write them (unless `pending` is False), in the table's order: one pass
        over the copy in memory, no object per cell."""
        cells = {**self._stored, **self.pending} if pending and self.pending else self._stored
        scale = -1.0 / self.half_life
        out: list[tuple[float, Key]] = []
        append = out.append
        for key, (weight, at) in cells.items():
            if actor is not None and key[0] != actor:
                continue
            if now > at:
                weight *= 2.0 ** ((now - at) * scale)
            if weight >= FLOOR:
                append((weight, key))
        return out

    def cells(self, now: float | None = None, actor: str | None = None) -> list[Cell]:
        """Every cell at or above FLOOR, heaviest first (ties in the table's order)."""
        t = self.now() if now is None else now
        weights = self._weights(t, actor)
        weights.sort(key=_WEIGHT, reverse=True)  # stable: ties keep the table's order
        return [Cell(a, s, r, w) for w, (a, s, r) in weights]

    def note(self, actor: str, symbol: int, rotation: int) -> None:
        """Count one ritual now, in memory, folded into its cell: every reader sees it; `flush`
        writes it. A kill -9 loses what was not flushed yet (a fading count of turns, never a
        turn itself)."""
        key = (actor, symbol, rotation)
        if key not in self.pending and len(self.pending) >= PENDING_MAX:
            return  # the disk refused the writes this long: see PENDING_MAX
        t = self.now()
        self.pending[key] = (self._decay(*self._latest(key, t), t) + 1.0, t)
        self.version += 1

    def flush(self) -> None:
        """Write what `note` counted, in one transaction; kept for the next flush if the disk
        refuses it (StorageError, raised)."""
        if self.pending:
            self._write(self.pending)
            self.pending = {}
        self.prune()

    def prune(self, now: float | None = None) -> int:
        """Drop the cells faded below FLOOR, and the weakest past MAX_CELLS; how many went."""
        t = self.now() if now is None else now
        weights = sorted(self._weights(t, pending=False), key=_WEIGHT, reverse=True)
        kept = {key for _, key in weights[:MAX_CELLS]}
        doomed = [key for key in self._stored if key not in kept]
        if doomed:
            with self.db.transaction():
                self.db.executemany(
                    "DELETE FROM tensor WHERE actor=? AND symbol=? AND rotation=?", doomed
                )
            for key in doomed:
                del self._stored[key]
        return len(doomed)

    def snapshot(self, now: float | None = None, limit: int = 200) -> dict[str, Any]:
        """The document published (retained) for dashboards: the `limit` heaviest cells, the
        weight of each symbol, and of the SNAPSHOT_ACTORS heaviest actors (`actors`: all)."""
        return self._snapshot(now, limit)[0]

    def snapshot_json(self, now: float | None = None, limit: int = 200) -> bytes:
        """`snapshot()` as published: its JSON, encoded once (the size bound measured it)."""
        return self._snapshot(now, limit)[1].encode()

    def _snapshot(self, now: float | None, limit: int) -> tuple[dict[str, Any], str]:
        t = self.now() if now is None else now
        weights = self._weights(t)
        by_symbol: defaultdict[int, float] = defaultdict(float)
        by_actor: defaultdict[str, float] = defaultdict(float)
        for weight, (actor, symbol, _) in weights:
            by_symbol[symbol] += weight
            by_actor[actor] += weight
        # The heaviest first, ties in the table's order (a stable sort, keyed in C: 25x faster
        # than heapq.nlargest's head of 5,000 here).
        heaviest = sorted(by_actor.items(), key=_WEIGHT_OF_ACTOR, reverse=True)[:SNAPSHOT_ACTORS]
        listed = max(limit, SNAPSHOT_ACTORS)
        top = sorted(weights, key=_WEIGHT, reverse=True)[:listed]
        while True:  # halved until it fits: at most log2(listed) + 1 tries
            doc = {
                "half_life_s": self.half_life,
                "clock_s": round(t, 3),
                "cells": [
                    {"actor": a, "symbol": s, "rotation": r, "weight": round(w, 4)}
                    for w, (a, s, r) in top[: min(limit, listed)]
                ],
                "by_symbol": {str(k): round(v, 4) for k, v in sorted(by_symbol.items())},
                "by_actor": {k: round(v, 4) for k, v in heaviest[:listed]},
                "actors": len(by_actor),
            }
            text = json.dumps(doc)
            if listed == 0 or len(text) <= SNAPSHOT_MAX_BYTES:
                return doc, text
            listed //= 2


_WEIGHT = itemgetter(0)  # of a (weight, cell)
_WEIGHT_OF_ACTOR = itemgetter(1)  # of an (actor, weight)


def persist_clock(tensor: AgencyTensor) -> None:
    """Record the running clock (the daemon does this periodically, so readers see decay)."""
    tensor.db.execute("INSERT OR REPLACE INTO tensor_clock(id, t) VALUES (0, ?)", (tensor.now(),))
