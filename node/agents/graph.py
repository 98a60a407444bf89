"""The long-term knowledge graph: facts (subject, relation, object) with provenance and time.

One row per distinct fact; seeing it again raises `seen` and moves `last_*`, keeping the first
provenance. Provenance says where a fact came from: `persona:<slug>` (the shipped persona data),
`event:<id>` (an event on the spine, e.g. a ritual or a visitor's request) or `cli`. Times are the
Lamport clock (orders events across nodes) and the wall clock (advisory: a Pi has no RTC).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from gibsey.node.agents.db import Db
from gibsey.node.agents.personas import Persona

SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    relation TEXT NOT NULL,
    object TEXT NOT NULL,
    provenance TEXT NOT NULL,
    actor TEXT NOT NULL DEFAULT '',
    first_lamport INTEGER NOT NULL DEFAULT 0,
    last_lamport INTEGER NOT NULL DEFAULT 0,
    first_wall REAL NOT NULL,
    last_wall REAL NOT NULL,
    seen INTEGER NOT NULL DEFAULT 1,
    UNIQUE(subject, relation, object)
);
CREATE INDEX IF NOT EXISTS facts_subject ON facts(subject);
CREATE INDEX IF NOT EXISTS facts_object ON facts(object);
"""


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    provenance: str
    actor: str
    first_lamport: int
    last_lamport: int
    first_wall: float
    last_wall: float
    seen: int

    def sentence(self) -> str:
        return f"{self.subject} {self.relation} {self.object}."


class FactStore:
    def __init__(self, db: Db) -> None:
        self.db = db
        self.db.create(SCHEMA)

    def add(
        self,
        subject: str,
        relation: str,
        obj: str,
        provenance: str,
        actor: str = "",
        lamport: int = 0,
        wall: float | None = None,
    ) -> None:
        now = time.time() if wall is None else wall
        self.db.execute(
            "INSERT INTO facts(subject, relation, object, provenance, actor, first_lamport,"
            " last_lamport, first_wall, last_wall) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(subject, relation, object) DO UPDATE SET seen = seen + 1,"
            " last_lamport = max(last_lamport, excluded.last_lamport),"
            " last_wall = excluded.last_wall",
            (subject, relation, obj, provenance, actor, lamport, lamport, now, now),
        )

    def query(
        self,
        subject: str | None = None,
        relation: str | None = None,
        obj: str | None = None,
        limit: int = 100,
    ) -> list[Fact]:
        where, params = [], []
        for column, value in (("subject", subject), ("relation", relation), ("object", obj)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (
            "SELECT subject, relation, object, provenance, actor, first_lamport, last_lamport,"
            " first_wall, last_wall, seen FROM facts"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last_lamport DESC, id DESC LIMIT ?"
        rows: list[tuple[Any, ...]] = self.db.execute(sql, (*params, limit))
        return [Fact(*r) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM facts")[0][0])

    def seed_persona(self, persona: Persona) -> None:
        prov = f"persona:{persona.slug}"
        self.add(persona.slug, "is named", persona.name, prov)
        self.add(persona.slug, "has colour", persona.colour, prov)
        self.add(persona.slug, "is symbol", str(persona.symbol), prov)


_NAME = re.compile(r"\b(?i:my name is|call me)\s+([A-Z][\w'-]{0,30}(?:\s+[A-Z][\w'-]{0,30})?)")
_LIKE = re.compile(r"\bI (?:like|love)\s+([\w' -]{1,40}?)(?:[.!?,]|$)", re.IGNORECASE)


def facts_from_prompt(actor: str, prompt: str) -> list[tuple[str, str, str]]:
    """What a visitor plainly says about themselves ("my name is Ada", "I love owls")."""
    out: list[tuple[str, str, str]] = []
    if m := _NAME.search(prompt):
        out.append((actor, "is called", m.group(1).strip()))
    if m := _LIKE.search(prompt):
        out.append((actor, "likes", m.group(1).strip().lower()))
    return out
