"""`gibsey bench story`: the narrative engine on a 1,000-page story, next to git in the same run.

Two branches of a generated 1,000-page story each rewrite a word on 200 pages; 100 pages are
rewritten on both sides (at different words: clean three-way merges) and 10 of those also at
the same word (conflicts). Timed:

- diff of the two branches (every page compared, word level) vs `git diff --no-index
  --word-diff` over the same pages written to two folders (one git process);
- the three-way merge plan of one branch into the other (all 1,000 pages considered, the
  both-sides pages merged word by word) vs `git merge-file` run on the pages changed on both
  sides (one git process per page, as git does per file);
- a full rebuild of the story graph from the ledger vs the ledger's own view rebuild (economy +
  governance fold) over the same entries.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

from gibsey.bench.report import Row
from gibsey.ledger.ledger import Ledger
from gibsey.node.story.corpus import read_corpus
from gibsey.node.story.engine import Story
from gibsey.node.story.testing import replace_word, write_corpus

PAGES = 1000
EACH = 200  # pages rewritten per branch
BOTH = 100  # of which rewritten on both branches
CONFLICTS = 10  # of which at the same word


def _best(fn: object, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def _setup(tmp: Path) -> tuple[Story, list[str], list[str]]:
    corpus = read_corpus(write_corpus(tmp / "corpus", PAGES, 150))
    ledger = Ledger.open(tmp / "node", SigningKey(b"\x51" * 32), synchronous="NORMAL")
    story = Story(ledger, tmp / "node")
    story.import_corpus(corpus, actor="an-author")
    story.create_branch("fox", actor="london-fox")
    story.create_branch("todd", actor="todd-fishbone")
    ids = [page for page, _ in corpus.page_hashes()]  # (the page files are not read again)
    rng = random.Random(3)
    picked = rng.sample(ids, 2 * EACH - BOTH)
    fox_pages = picked[:EACH]
    todd_pages = picked[EACH - BOTH :]
    both = set(fox_pages) & set(todd_pages)
    clash = sorted(both)[:CONFLICTS]
    for branch, pages, word, pos in (
        ("fox", fox_pages, "vixen", 5),
        ("todd", todd_pages, "bone", 60),
    ):
        for p in pages:
            _, v = story.page(branch, p)
            text = replace_word(v.text, pos, word)
            if p in clash:
                text = replace_word(text, 30, f"{word}-clash")
            story.write(branch, p, text, "london-fox" if branch == "fox" else "todd-fishbone")
    return story, sorted(both), ids


def run() -> list[Row]:
    git = shutil.which("git")
    with tempfile.TemporaryDirectory(prefix="gibsey-bench-story-") as t:
        tmp = Path(t)
        story, both, ids = _setup(tmp)
        g = story.graph
        fox, todd = story.head("fox"), story.head("todd")
        base = g.merge_base(fox, todd)
        assert base is not None
        tf, tt, tb = g.tree(fox), g.tree(todd), g.tree(base)
        diff_s = _best(lambda: story.diff("fox", "todd"))
        merge_s = _best(lambda: story.plan_merge("todd", "fox"))
        plan = story.plan_merge("todd", "fox")
        rebuild_s = _best(lambda: story.sync(rebuild=True), 2)
        ledger_s = _best(lambda: story.ledger.rebuild(), 2)
        entries = story.ledger.store.count()
        git_diff = git_merge = None
        if git:
            for name, tree in (("a", tf), ("b", tt)):
                (tmp / name).mkdir()
                for p in ids:
                    (tmp / name / p).write_text(g.version(tree[p]).text)
            for p in both:
                for name, tree in (("o", tf), ("z", tb), ("t", tt)):
                    (tmp / f"{p}.{name}").write_text(g.version(tree[p]).text)
            git_diff, git_merge = _time_git(git, tmp, both)
        story.close_all()
    note = "git not installed" if git is None else ""
    return [
        Row(
            f"diff fox..todd, {PAGES} pages ({2 * EACH - BOTH} differ)",
            diff_s * 1000,
            None if git_diff is None else git_diff * 1000,
            "ms",
            goal=("<=", 3.0),
            note=note or "baseline: git diff --no-index --word-diff",
        ),
        Row(
            f"merge todd into fox ({len(both)} both-sided, {len(plan.conflicts)} conflicts)",
            merge_s * 1000,
            None if git_merge is None else git_merge * 1000,
            "ms",
            goal=("<=", 1.0),
            note=note or f"baseline: git merge-file on the {len(both)} both-sided pages",
        ),
        Row(
            f"rebuild story graph from {entries} ledger entries",
            rebuild_s * 1000,
            ledger_s * 1000,
            "ms",
            note="baseline: the ledger's own view rebuild over the same entries",
        ),
    ]


def _time_git(git: str, tmp: Path, both: list[str]) -> tuple[float, float]:
    """Seconds for git's word diff of folders a/ and b/, and for its three-way merge of each
    both-sided page (<page>.o ours, .z base, .t theirs), as written under `tmp`."""

    def gdiff() -> None:
        subprocess.run(
            [git, "diff", "--no-index", "--word-diff=plain", "a", "b"],
            cwd=tmp,
            capture_output=True,
            check=False,
        )

    def gmerge() -> None:
        for p in both:
            subprocess.run(
                [git, "merge-file", "-p", f"{p}.o", f"{p}.z", f"{p}.t"],
                cwd=tmp,
                capture_output=True,
                check=False,
            )

    return _best(gdiff), _best(gmerge)
