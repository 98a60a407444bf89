"""The real published corpus (tests/data/gibsey-canon: index.json and metadata/pages.json of
mbu09a/the-gibsey-project, four real pages) imported the way a user imports it: `gibsey story
import DIR` as a subprocess, with a node data directory, counted on the ledger afterwards.

Only four of the 710 real page files could be fetched (the code index hands out one file per
request), so each test writes a small stand-in page for every other record, named by the
record's `filename`: the whole real metadata is imported, and the four real pages are compared
byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gibsey.ledger.ledger import Ledger
from gibsey.node.story.engine import Story

CANON_DATA = Path(__file__).parent / "data" / "gibsey-canon"
REAL_PAGES = sorted((CANON_DATA / "pages").iterdir())
GIBSEY = Path(sys.executable).parent / "gibsey"
CRLF_PAGE = (
    "003"  # a stand-in written here with CRLF line ends and a tab: none of the real ones has
)
CRLF_TEXT = "An author's preface, page three.\r\n\r\n\tIndented, with a tab.\r\nLast line\r\n"
SECTION_TITLE = (
    "section 'Part One: The Entrance Way' of glyph-marrow's pages is not a section number"
)


def records(root: Path) -> list[dict[str, object]]:
    return list(json.loads((root / "metadata" / "pages.json").read_bytes()))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The real index.json and pages.json, the four real pages, and a stand-in for every other
    record's file (page 003's with CRLF line ends and a tab)."""
    root = tmp_path / "gibsey-canon"
    shutil.copytree(CANON_DATA, root)
    for r in records(root):
        f = root / "pages" / str(r["filename"])
        if r["id"] == CRLF_PAGE:
            f.write_bytes(CRLF_TEXT.encode())
        elif not f.exists():
            f.write_bytes(f"Stand-in for page {r['id']}, {r['title']}.\n".encode())
    return root


def gibsey(data: Path, *argv: str) -> tuple[int, str]:
    """`gibsey --data DATA ARGV...` as a user runs it; (exit status, stdout and stderr)."""
    env = dict(os.environ, COLUMNS="1000")  # rich wraps at 80 columns when piped
    done = subprocess.run(
        [str(GIBSEY), "--data", str(data), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def ledger_entries(data: Path) -> int:
    ledger = Ledger.open(data)
    try:
        return ledger.store.count()
    finally:
        ledger.close()


def test_real_metadata_imports_whole_and_byte_for_byte(corpus: Path, tmp_path: Path) -> None:
    """Tried: the published index.json and pages.json (710 records; pages 162-203 give a section
    title, not a number) through `gibsey story import`. Must hold: exit 0, all 710 pages on
    main, each real page's text exactly its file's bytes, a CRLF page keeps its CRLF and tab."""
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 0, out
    assert "imported 710 pages into main" in out, out
    story = Story.open(data)
    try:
        story.sync()
        tree = story.graph.tree(story.head("main"))
        assert sorted(tree) == sorted(str(r["id"]) for r in records(corpus))
        assert len(tree) == 710
        for f in REAL_PAGES:
            page = f.name.split("-")[0]
            assert story.page("main", page)[1].text.encode() == f.read_bytes(), f.name
        crlf = story.page("main", CRLF_PAGE)[1].text
        assert crlf == CRLF_TEXT and "\r\n" in crlf and "\t" in crlf
    finally:
        story.close_all()


def test_section_title_is_derived_from_index_and_reported_once(
    corpus: Path, tmp_path: Path
) -> None:
    """Tried: the real records 162-203, whose `section` is "Part One: The Entrance Way". Must
    hold: each takes glyph-marrow's section from index.json (its title number, 3), and the
    correction is said on one line for all 42 records, not once per record."""
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 0, out
    said = [line for line in out.splitlines() if SECTION_TITLE in line]
    assert len(said) == 1, out
    assert said[0].startswith("corrected: ") and "used 3" in said[0]
    assert said[0].endswith("(42 records, ids 162-203)")
    story = Story.open(data)
    try:
        story.sync()
        sections = {story.page("main", f"{n:03d}")[1].section for n in range(162, 204)}
        assert sections == {3}
        assert story.page("main", "161")[1].section == 3
    finally:
        story.close_all()


def test_published_corpus_imports_under_strict(corpus: Path, tmp_path: Path) -> None:
    """Tried: `--strict` on the published metadata. Must hold: its corrections (a section
    title, a colour that is not the symbol's) are accepted layout, not warnings: exit 0, 710
    pages, no warning line."""
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", "--strict", str(corpus))
    assert rc == 0, out
    assert "imported 710 pages into main" in out
    assert not [line for line in out.splitlines() if line.startswith("warning")], out


def test_fields_the_layout_lacks_are_ignored_and_reported_once(
    corpus: Path, tmp_path: Path
) -> None:
    """Tried: five real records carrying a field the layout does not define (`audio`). Must
    hold: exit 0, the field said once for the five records, and the pages stored without it
    (the same page versions as without the field)."""
    meta = records(corpus)
    for r in meta[:5]:
        r["audio"] = f"{r['id']}.mp3"
    (corpus / "metadata" / "pages.json").write_text(json.dumps(meta, indent=2))
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 0, out
    said = [line for line in out.splitlines() if "'audio'" in line]
    assert said == [
        "corrected: field 'audio' is not part of a page in this layout: ignored "
        "(5 records, ids 001-005)"
    ], out
    story = Story.open(data)
    try:
        story.sync()
        assert "audio" not in story.page("main", "001")[1].to_object()
    finally:
        story.close_all()


def test_missing_page_files_are_refused_naming_every_record(corpus: Path, tmp_path: Path) -> None:
    """Tried: two records of the real metadata (ids 100 and 101) whose page files are gone.
    Must hold: exit 1 naming the first record and its file and counting both, nothing on the
    ledger (no page of the corpus is imported without them)."""
    meta = records(corpus)
    for r in meta[99:101]:
        (corpus / "pages" / str(r["filename"])).unlink()
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 1, out
    said = " ".join(out.split())
    assert f"record 99 (id 100): field 'filename': {meta[99]['filename']} not found" in said
    assert "2 records in all name a page file that is not there: ids 100-101" in said
    assert ledger_entries(data) == 0


def test_page_file_no_record_names_is_reported_and_refused_when_strict(
    corpus: Path, tmp_path: Path
) -> None:
    """Tried: an extra page file in pages/ that no record names. Must hold: the 710 named pages
    are imported (exit 0) and a warning names the file, once; with --strict the import is
    refused (exit 1, the file named) and nothing is written."""
    (corpus / "pages" / "711-a-page-nobody-listed.md").write_text("an orphan\n")
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 0, out
    warned = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert warned == [
        "warning: page files in pages/ that no record of metadata/pages.json names: not "
        "imported (1 file, files 711-a-page-nobody-listed.md)"
    ], out
    assert "imported 710 pages into main" in out
    strict = tmp_path / "strict"
    rc, out = gibsey(strict, "story", "import", "--strict", str(corpus))
    assert rc == 1, out
    assert "--strict: 1 warning(s): page files in pages/" in " ".join(out.split())
    assert "711-a-page-nobody-listed.md" in out
    assert ledger_entries(strict) == 0


def test_per_symbol_count_that_disagrees_with_index_is_refused(
    corpus: Path, tmp_path: Path
) -> None:
    """Tried: princhetta's last record (id 385) and its page file removed, so pages.json has 4
    records where index.json lists 5 pages (glyph-marrow's list, which repeats pageIndex
    numbers, still agrees). Must hold: exit 1 naming the symbol, both counts and the missing
    number, nothing written."""
    meta = records(corpus)
    gone = next(r for r in meta if r["id"] == "385")
    meta.remove(gone)
    (corpus / "metadata" / "pages.json").write_text(json.dumps(meta, indent=2))
    (corpus / "pages" / str(gone["filename"])).unlink()
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 1, out
    said = " ".join(out.split())
    assert "index.json: pages per symbol:" in said
    assert (
        "princhetta: index.json lists 5 pages, pages.json has 4 records "
        "(listed but no record: 385)" in said
    ), out
    assert "glyph-marrow" not in said
    assert ledger_entries(data) == 0


def test_second_import_into_another_branch_shares_history(corpus: Path, tmp_path: Path) -> None:
    """Tried: the same corpus imported into main, then into branch `copy`, then `again`. Must
    hold: each later import appends one ledger entry (the branch, at the first import's commit),
    not ~727 duplicates, and the branches share that commit (a merge base exists)."""
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 0, out
    first = ledger_entries(data)
    assert first > 710
    rc, out = gibsey(data, "story", "import", str(corpus), "--branch", "copy")
    assert rc == 0, out
    assert (
        "imported 710 pages into copy (1 ledger entry): the same pages as the import on main" in out
    )
    assert ledger_entries(data) == first + 1
    rc, out = gibsey(data, "story", "import", str(corpus), "--branch", "again")
    assert rc == 0, out
    assert ledger_entries(data) == first + 2
    story = Story.open(data)
    try:
        story.sync()
        main = story.head("main")
        assert story.head("copy") == story.head("again") == main
        assert story.graph.merge_base(story.head("copy"), main) == main
        copy = story.graph.branch("copy")
        assert copy is not None and copy.base == "main"
    finally:
        story.close_all()


def test_pages_read_in_the_books_order_across_chapters(corpus: Path, tmp_path: Path) -> None:
    """Tried (an outside tester, on the published metadata): glyph-marrow's chapters number
    their pages from 1, and its pages read 025, 058, 075, 026, 059, ... (section and index
    alone), on the REST pages list, GraphQL and the graph's FOLLOWS edges alike. Must hold:
    each symbol's pages read in the book's order, which its page ids give (001 to 710), and
    the first page of a chapter follows the last page of the chapter before."""
    data = tmp_path / "node"
    rc, out = gibsey(data, "story", "import", str(corpus))
    assert rc == 0, out
    story = Story.open(data)
    try:
        story.sync()
        graph = story.graph
        tree = graph.tree(story.head("main"))
        order = [graph.version(h) for h in graph.in_reading_order(tree.values())]
        by_symbol: dict[str, list[str]] = {}
        for v in order:
            by_symbol.setdefault(v.symbol, []).append(v.page)
        assert len(by_symbol["glyph-marrow"]) == 179
        for symbol, pages in by_symbol.items():
            assert pages == sorted(pages), symbol
        first_of_chapter_2 = next(
            str(r["id"])
            for r in records(corpus)
            if r["symbolId"] == "glyph-marrow" and r.get("chapter") == "Chapter 2"
        )
        before = f"{int(first_of_chapter_2) - 1:03d}"
        follows = graph.edges("FOLLOWS", f"page:{first_of_chapter_2}")
        assert ("page:" + first_of_chapter_2, "FOLLOWS", f"page:{before}") in follows, follows
    finally:
        story.close_all()
    # `story show` cuts a long title where a table would, and says it is cut (it did not).
    rc, out = gibsey(data, "story", "show", "main", "--limit", "30")
    assert rc == 0, out
    long_title = "An Unexpected Disappearance: A Glyph Marrow Mystery - Chapter 1: The Queue"
    assert long_title[:59] + "…" in out, out
