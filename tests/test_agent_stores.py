"""Memory (ONNX MiniLM + sqlite-vec), the knowledge graph, the Agency Tensor, the personas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gibsey.core.mqtt import MAX_MESSAGE_BYTES
from gibsey.node.agents.db import Db, DbError, stdlib_can_load_extensions
from gibsey.node.agents.graph import FactStore, facts_from_prompt
from gibsey.node.agents.memory import DIM, Embedder, MemoryStore
from gibsey.node.agents.personas import load_personas
from gibsey.node.agents.tensor import MAX_CELLS, SNAPSHOT_ACTORS, AgencyTensor

# Restated from DESIGN.md, not imported from dialcore.qdpi: an independent check of the personas.
CHARACTERS = (
    ("an-author", "#34FF78"),
    ("london-fox", "#FF3B3B"),
    ("glyph-marrow", "#00A2FF"),
    ("phillip-bafflemint", "#FFFF33"),
    ("jacklyn-variance", "#FF00FF"),
    ("oren-progresso", "#00FFAA"),
    ("old-natalie", "#7A3CFF"),
    ("princhetta", "#AAAAAA"),
    ("cop-e-right", "#FFFFFF"),
    ("new-natalie", "#CC66FF"),
    ("arieol-owlist", "#99CCFF"),
    ("jack-parlance", "#FF3385"),
    ("manny-valentinas", "#FFB000"),
    ("shamrock-stillman", "#00FFFF"),
    ("todd-fishbone", "#FF7744"),
    ("the-author", "#BFFF00"),
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_sixteen_personas_in_corpus_order_with_their_colours() -> None:
    personas = load_personas()
    got = [(p.slug, p.colour) for p in personas.ordered()]
    assert got == list(CHARACTERS)
    assert [p.symbol for p in personas.ordered()] == list(range(16))
    assert personas.reviewer is not None and personas.reviewer.slug not in personas.characters
    fox = personas.get("london-fox")
    assert fox is not None
    prompt = fox.prompt("What is the dial?", memories=["A visitor asked about owls."])
    assert prompt.endswith("Visitor: What is the dial?\nLondon Fox:")
    assert "A visitor asked about owls." in prompt


def test_personas_command_lists_one_a_line_name_first() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gibsey", "agent", "personas"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 16
    assert out[1].startswith("London Fox") and "london-fox" in out[1]


def test_embeddings_are_unit_vectors_that_know_similar_sentences(embedder: Embedder) -> None:
    v = embedder.embed(["a red fox runs", "the fox is running", "interest rates rose"])
    assert v.shape == (3, DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]


def test_memory_nearest_neighbour_returns_the_right_memory(
    tmp_path: Path, embedder: Embedder
) -> None:
    store = MemoryStore(Db(tmp_path / "m.db"))
    texts = [
        ("london-fox", "A visitor asked how the dial works and heard about four rotations."),
        ("london-fox", "A visitor said their favourite colour is green like a pine forest."),
        ("london-fox", "A visitor wanted to know whether machines can dream at night."),
        ("glyph-marrow", "A visitor asked how the dial works; the letters turned into stairs."),
    ]
    for persona, text in texts:
        store.add(persona, text, embedder.embed_one(text), actor="v")
    hits = store.nearest(embedder.embed_one("Do computers have dreams?"), k=2, persona="london-fox")
    assert hits[0].text == texts[2][1]
    assert hits[0].distance < hits[1].distance
    # The persona filter runs inside the KNN: glyph-marrow's own memory, not london-fox's.
    hits = store.nearest(embedder.embed_one("how does the dial turn"), k=1, persona="glyph-marrow")
    assert [h.text for h in hits] == [texts[3][1]]
    assert store.count() == 4


def test_both_sqlite_paths(tmp_path: Path) -> None:
    db = Db(tmp_path / "a.db", backend="apsw")
    assert db.backend == "apsw" and db.vec_version().startswith("v")
    if stdlib_can_load_extensions():
        std = Db(tmp_path / "s.db", backend="stdlib")
        assert std.vec_version() == db.vec_version()
    else:
        with pytest.raises(DbError, match="cannot load extensions"):
            Db(tmp_path / "s.db", backend="stdlib")
        assert Db(tmp_path / "auto.db").backend == "apsw"
        # The stdlib path still serves the stores that need no extension.
        plain = Db(tmp_path / "plain.db", backend="stdlib", vec=False)
        FactStore(plain).add("a", "b", "c", "test")


def test_facts_with_provenance_and_time(tmp_path: Path) -> None:
    facts = FactStore(Db(tmp_path / "f.db"))
    facts.add("ada", "is called", "Ada", "event:e1", "ada", lamport=5)
    facts.add("ada", "is called", "Ada", "event:e9", "ada", lamport=9)
    facts.add("ada", "likes", "owls", "event:e2", "ada", lamport=6)
    facts.add("bob", "likes", "owls", "event:e3", "bob", lamport=7)
    got = facts.query(subject="ada")
    assert [(f.relation, f.object) for f in got] == [("is called", "Ada"), ("likes", "owls")]
    called = got[0]
    assert called.provenance == "event:e1" and called.seen == 2
    assert (called.first_lamport, called.last_lamport) == (5, 9)
    assert {f.subject for f in facts.query(relation="likes", obj="owls")} == {"ada", "bob"}
    assert facts_from_prompt("v1", "Hello, my name is Ada Lovelace. I love owls!") == [
        ("v1", "is called", "Ada Lovelace"),
        ("v1", "likes", "owls"),
    ]


def test_a_tensor_batch_weighs_each_ritual_as_one_at_a_time_would(tmp_path: Path) -> None:
    """The daemon writes rituals in batches, each cell once per batch: the weights after every
    ritual, and the cells stored, are those of writing the rituals one by one (repeats of a
    cell, decay between them, a cell already stored before the batch)."""
    batch = [("ada", 1, 3, 100.0), ("bob", 2, 0, 101.0), ("ada", 1, 3, 105.0)]
    batch += [("ada", 1, 3, 110.0 + i) for i in range(5)] + [("bob", 2, 0, 130.0)]
    one = AgencyTensor(Db(tmp_path / "one.db"), half_life=10.0)
    many = AgencyTensor(Db(tmp_path / "many.db"), half_life=10.0)
    for tensor in (one, many):
        tensor.add("ada", 1, 3, now=90.0)  # stored before the batch
    singly = [one.add(a, s, r, now=t) for a, s, r, t in batch]
    assert many.add_many(batch) == pytest.approx(singly)
    cells, batched = one.cells(now=140.0), many.cells(now=140.0)
    assert [(c.actor, c.symbol, c.rotation) for c in batched] == [
        (c.actor, c.symbol, c.rotation) for c in cells
    ]
    assert [c.weight for c in batched] == pytest.approx([c.weight for c in cells])


def test_tensor_counts_and_decays(tmp_path: Path) -> None:
    db = Db(tmp_path / "t.db")
    tensor = AgencyTensor(db, half_life=10.0)
    for _ in range(4):
        tensor.add("ada", 1, 3, now=100.0)
    tensor.add("bob", 2, 0, now=100.0)
    cells = {(c.actor, c.symbol, c.rotation): c.weight for c in tensor.cells(now=100.0)}
    assert cells == {("ada", 1, 3): 4.0, ("bob", 2, 0): 1.0}
    later = {(c.actor, c.symbol, c.rotation): c.weight for c in tensor.cells(now=110.0)}
    assert later[("ada", 1, 3)] == pytest.approx(2.0)  # one half-life
    assert tensor.add("ada", 1, 3, now=120.0) == pytest.approx(2.0)  # 4 -> 1 after 20 s, +1
    assert tensor.cells(now=100_000.0) == []  # faded below the floor
    assert tensor.prune(now=100_000.0) == 2
    snap = AgencyTensor(db, half_life=10.0).snapshot(now=120.0)
    assert snap["cells"] == [] or snap["by_actor"].keys() <= {"ada", "bob"}


def test_a_flood_of_new_names_keeps_the_tensor_and_its_document_bounded(tmp_path: Path) -> None:
    """Tried: a stranger turning the dial under a new name every time (75,000 names). Every
    name stayed a cell for hours; the snapshot, read on the event loop, grew to 2 MB, over the
    broker's message limit, which closed the node's connection at every publish. Must hold:
    after a write the table keeps MAX_CELLS cells, the heaviest (a regular's outweighs the
    one-turn strangers); the document names SNAPSHOT_ACTORS actors and counts them all, and
    stays under a tenth of the broker's limit."""
    tensor = AgencyTensor(Db(tmp_path / "t.db"), half_life=3600.0)
    names = MAX_CELLS + 3000
    for i in range(names):
        tensor.note(f"stranger-{i:05d}", i % 16, i % 4)
    for _ in range(3):
        tensor.note("regular", 4, 1)
    tensor.flush()
    (count,) = tensor.db.execute("SELECT COUNT(*) FROM tensor")[0]
    assert count == MAX_CELLS
    assert tensor.cells(actor="regular")[0].weight == pytest.approx(3.0, rel=1e-3)
    doc = tensor.snapshot()
    assert len(doc["by_actor"]) == SNAPSHOT_ACTORS and next(iter(doc["by_actor"])) == "regular"
    assert doc["actors"] == MAX_CELLS  # the strangers kept, and the regular
    assert len(json.dumps(doc)) < MAX_MESSAGE_BYTES / 4
    for i in range(SNAPSHOT_ACTORS):  # the longest names an event allows, each escaped in JSON
        tensor.note(f"{'é' * 251}{i:05d}", 1, 1)
    tensor.flush()
    doc = tensor.snapshot()
    assert len(json.dumps(doc)) <= MAX_MESSAGE_BYTES / 4
    assert 0 < len(doc["by_actor"]) < SNAPSHOT_ACTORS and doc["actors"] == MAX_CELLS
