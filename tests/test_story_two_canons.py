"""Two nodes that each imported a corpus before they met: one `main` stands, the other is kept.

Tried (an outside tester, with the published corpus): node A imported it and merged a gallery
edit by a passed hearing; node C imported a copy with one page changed; once they met, A's
`main` was C's import, A's import and its merge referenced by no branch, and nothing said so.
Must hold: both nodes fold the same `main` (the create first in the ledger's order), the other
is kept as branch `main.<its author's first 8 hex>` at its import, and the node whose `main` was
replaced says so once (the alert's text, naming the kept branch), the other node nothing.

Real parts: two ledgers with their own keys, their feeds exchanged entry by entry as the mesh
imports them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gibsey.node.story.corpus import SAMPLE, read_corpus
from tests.story_support import FOX, make_story


def test_a_second_main_is_kept_as_a_branch_and_the_replaced_node_says_so(tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(SAMPLE, changed)
    page = next((changed / "pages").glob(f"{FOX}-*.md"))
    page.write_text(page.read_text() + "\nA line only node C's copy has.\n")
    a = make_story(tmp_path / "a", seed=1)
    c = make_story(tmp_path / "c", seed=2, sample=False)
    try:
        c.import_corpus(read_corpus(changed), actor="an-author")
        a.sync()
        c.sync()
        roots = {a.ledger.author: a.head("main"), c.ledger.author: c.head("main")}
        assert len(set(roots.values())) == 2
        for e in a.ledger.store.iter_ordered():
            c.ledger.import_entry(e.raw)
        for e in c.ledger.store.iter_ordered():
            a.ledger.import_entry(e.raw)
        a.sync()
        c.sync()
        assert a.head("main") == c.head("main")
        winner = next(author for author, root in roots.items() if root == a.head("main"))
        (loser,) = set(roots) - {winner}
        kept = f"main.{loser.hex()[:8]}"
        for s in (a, c):
            assert s.head(kept) == roots[loser]
        replaced, stood = (a, c) if loser == a.ledger.author else (c, a)
        said = replaced.graph.take_canon_replaced()
        assert said is not None and f"kept as {kept}, and hearings that merged" in said, said
        assert replaced.graph.take_canon_replaced() is None  # said once
        assert stood.graph.take_canon_replaced() is None
    finally:
        a.close_all()
        c.close_all()
