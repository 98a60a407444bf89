"""Read a corpus in the public Gibsey layout, checking everything before anything is imported.

    DIR/index.json            {"symbols": {slug: {"title": int, "color": "#RRGGBB",
                                                   "characterDir": str, "pages": [int, ...]}}}
    DIR/metadata/pages.json   [{"id", "symbolId", "title", "color", "pageIndex", "section",
                                "chapter"?, "filename"}, ...]
    DIR/pages/<filename>      one Markdown file per page (also looked for in DIR/ and in the
                              symbol's characterDir)

What the published corpus (github.com/mbu09a/the-gibsey-project, gibsey-canon/corpus/) does,
and so what the layout allows, is accepted; each correction is reported once, as one `CorpusNote`
naming the records it covers (a summary, not a line per page):

- `section` is the symbol's section, i.e. the symbol's `title` number in index.json. A record
  whose `section` is not a number (the canon's pages 162-203 give the title "Part One: The
  Entrance Way") takes that number (`corrected`); a number that disagrees with index.json is
  replaced by it too, as a `warning` (index.json is what ties a symbol to its section).
- `color` is the symbol's: a record's own colour (the canon's 162-203 give #FFB6C1 for
  glyph-marrow's #00A2FF) is not stored, and a differing one is reported (`corrected`).
- Fields the layout does not define are ignored knowingly and reported (`corrected`): a page
  version is content-addressed with a fixed shape, so unknown fields would change its hash.

What is really wrong is refused (CorpusError, nothing imported) or reported as a `warning`
(`read_corpus(..., strict=True)`, i.e. `gibsey story import --strict`, refuses warnings too):

- a record whose page file is missing: refused, naming every such record - the metadata
  promises a page the corpus cannot deliver, and importing the rest truncates canon silently;
- per-symbol page counts: index.json's `pages` list for a symbol and the records of that symbol
  in pages.json must have the same length, else refused. The list holds the records'
  `pageIndex` values, not page ids, and may repeat them: glyph-marrow's lists 1-5 three times
  and 6-17 twice, because its chapters 1, 2 and 3 each number their pages from 1 (179 entries
  for 179 records). So the lists *agree* when they are equal as multisets of numbers; equal
  lengths with different numbers is a `warning` (the same number of pages, numbered otherwise);
- a file in pages/ that no record names (hidden files aside): a `warning`, not refused - every
  page the metadata names is imported, and the importer cannot invent a symbol, title and place
  for a file it has no record of; the warning names each file.

Page text is stored byte for byte: the file's bytes decoded as UTF-8 (strictly), with no newline
translation (CRLF stays CRLF) and nothing stripped. A malformed corpus raises CorpusError
naming the file, the record and the field.

Every page file is read and checked (and its version hashed) by `read_corpus`, but the texts
are not kept: `Corpus.pages` reads each page's file again when that page is wanted
(`CorpusPages`), so a corpus of tens of MB is never held whole - a Python str takes 2 or 4
bytes a character once a page holds one character past Latin-1 (a curly quote, a dash), so a
42 MB corpus was 80 MB and more of memory, on a 512 MB Pi Zero 2 W. A page file changed (or
gone) after the check is said when it is read again (CorpusError); an import refuses it whole.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from .model import MAX_PAGE_CHARS, MAX_TITLE, PAGE_ID_RE, PageVersion, StoryError

SAMPLE = Path(__file__).parent / "sample_corpus"
COLOUR_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")
KNOWN_FIELDS = frozenset(
    ("id", "symbolId", "title", "color", "pageIndex", "section", "chapter", "filename")
)
LISTED_AT_MOST = 12  # ids or numbers named in one message; the rest are counted

CorpusNoteKind = Literal["corrected", "warning"]


class CorpusError(StoryError):
    def __init__(self, file: Path | str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = str(file), where, problem
        super().__init__(f"{file}: {where}: {problem}")


@dataclass(frozen=True)
class CorpusSymbol:
    slug: str
    title: int
    colour: str
    folder: str
    listed: tuple[int, ...] = ()  # index.json's `pages`: the pageIndex values of its records


@dataclass(frozen=True)
class CorpusNote:
    """One correction or finding, said once for all the records (or files) it covers."""

    kind: CorpusNoteKind
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


@dataclass(frozen=True)
class Corpus:
    root: Path
    symbols: dict[str, CorpusSymbol]
    pages: Sequence[PageVersion]  # in corpus order (read_corpus: CorpusPages, texts read lazily)
    notes: tuple[CorpusNote, ...] = ()

    @property
    def warnings(self) -> list[CorpusNote]:
        return [n for n in self.notes if n.kind == "warning"]

    def page_hashes(self) -> list[tuple[str, str]]:
        """(page id, version hash) of each page, in corpus order: the check's (no page file is
        read again) when read_corpus made the corpus."""
        if isinstance(self.pages, CorpusPages):
            return self.pages.page_hashes()
        return [(p.page, p.hash) for p in self.pages]

    def checked_page(self, i: int) -> PageVersion:
        """Page `i`, read again; CorpusError if its file no longer reads as it did when the
        corpus was checked (changed or gone since)."""
        pages = self.pages
        v = pages[i]
        if isinstance(pages, CorpusPages) and v.hash != pages.hash_at(i):
            raise CorpusError(
                pages.file_at(i), "file", "changed since the corpus was checked: import it again"
            )
        return v


@dataclass
class _Findings:
    """Corrections and findings grouped by what they say, so each is reported once."""

    groups: dict[tuple[CorpusNoteKind, str, str], list[str]] = field(default_factory=dict)

    def add(self, kind: CorpusNoteKind, text: str, item: str = "", noun: str = "record") -> None:
        items = self.groups.setdefault((kind, text, noun), [])
        if item:
            items.append(item)

    def notes(self) -> tuple[CorpusNote, ...]:
        out = []
        for (kind, text, noun), items in self.groups.items():
            if items:
                label = "ids" if noun == "record" else "files"
                text = f"{text} ({len(items)} {noun}{'s' * (len(items) != 1)}, {label} "
                text += f"{_summary(items)})"
            out.append(CorpusNote(kind, text))
        return tuple(out)


@dataclass(frozen=True)
class _Record:
    """A checked record of metadata/pages.json, before its page file is read."""

    where: str
    page: str
    symbol: str
    title: str
    index: int
    section: int
    chapter: str | None
    filename: str

    def version(self, text: str) -> PageVersion:
        return PageVersion(
            self.page, self.symbol, self.title, self.index, text, self.section, self.chapter
        )


class CorpusPages(Sequence[PageVersion]):
    """A checked corpus's pages in corpus order, each one's text read from its file when the
    page is wanted (one page at a time in memory, not the corpus); the version hashes are the
    check's. A file that no longer reads as checked (gone, not UTF-8, too long) raises
    CorpusError; one that reads but changed gives its new text, which an import refuses (its
    hash is not the check's, see `hash_at`)."""

    def __init__(self, records: list[_Record], files: list[Path], hashes: list[str]) -> None:
        self._records = records
        self._files = files
        self._hashes = hashes

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, i: int) -> PageVersion: ...

    @overload
    def __getitem__(self, i: slice) -> list[PageVersion]: ...

    def __getitem__(self, i: int | slice) -> PageVersion | list[PageVersion]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._records[i].version(_page_text(self._files[i]))

    def __iter__(self) -> Iterator[PageVersion]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        return f"<CorpusPages: {len(self)} pages>"

    def hash_at(self, i: int) -> str:
        """The version hash of page `i` as checked by read_corpus."""
        return self._hashes[i]

    def file_at(self, i: int) -> Path:
        return self._files[i]

    def page_hashes(self) -> list[tuple[str, str]]:
        return [(r.page, h) for r, h in zip(self._records, self._hashes, strict=True)]


def _summary(items: list[str]) -> str:
    """`162-203, 205` for runs of numeric ids (as written), else the items; at most a few."""
    pieces: list[str] = []
    run: list[str] = []
    for item in items:
        if run and item.isdigit() and run[-1].isdigit() and int(item) == int(run[-1]) + 1:
            run.append(item)
            continue
        if run:
            pieces.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [item]
    if run:
        pieces.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    if len(pieces) > LISTED_AT_MOST:
        return ", ".join(pieces[:LISTED_AT_MOST]) + f" and {len(pieces) - LISTED_AT_MOST} more"
    return ", ".join(pieces)


def _numbers(counts: collections.Counter[int]) -> str:
    """`1 (x3), 2, 80` - pageIndex numbers repeat (chapters number their pages from 1)."""
    shown = [f"{n} (x{c})" if c > 1 else str(n) for n, c in sorted(counts.items())]
    more = len(shown) - LISTED_AT_MOST
    return ", ".join(shown[:LISTED_AT_MOST]) + (f" and {more} more" if more > 0 else "")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise CorpusError(path, "file", "missing")
    try:
        # utf-8-sig: a byte order mark, which Windows editors write, is not refused (JSON's
        # RFC 8259 lets a reader ignore it); it is no part of the text.
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise CorpusError(path, "file", f"not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise CorpusError(path, f"line {exc.lineno} column {exc.colno}", exc.msg) from exc


def _field(
    path: Path, where: str, rec: dict[str, Any], key: str, typ: type | tuple[type, ...]
) -> Any:
    if key not in rec:
        raise CorpusError(path, where, f"missing field {key!r}")
    value = rec[key]
    if not isinstance(value, typ) or isinstance(value, bool):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise CorpusError(path, where, f"field {key!r} must be {names}, got {value!r}")
    return value


def read_corpus(root: Path, *, strict: bool = False) -> Corpus:
    """The corpus at `root`, checked whole; `strict` refuses warnings as well as errors."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise CorpusError(
            root, "the corpus", f"{what}: name a corpus's folder (index.json, pages/, metadata/)"
        )
    index_path = root / "index.json"
    symbols = _read_symbols(index_path)
    meta_path = root / "metadata" / "pages.json"
    records = _load_json(meta_path)
    if not isinstance(records, list):
        raise CorpusError(meta_path, "top level", "must be a list of page records")
    found = _Findings()
    seen: dict[str, int] = {}  # page id -> the record that named it first
    checked = [_read_record(meta_path, n, r, symbols, seen, found) for n, r in enumerate(records)]
    if not checked:
        raise CorpusError(meta_path, "top level", "no pages")
    files = [_find_file(root, symbols[r.symbol], r.filename) for r in checked]
    missing = [r for r, f in zip(checked, files, strict=True) if f is None]
    if missing:
        raise _missing_files(meta_path, missing)
    _check_counts(index_path, symbols, checked, found)
    _check_orphans(root / "pages", {r.filename for r in checked}, found)
    found_files = [f for f in files if f is not None]
    # Every file read and checked, its version hashed; its text dropped (CorpusPages).
    hashes = [r.version(_page_text(f)).hash for r, f in zip(checked, found_files, strict=True)]
    pages = CorpusPages(checked, found_files, hashes)
    corpus = Corpus(root, symbols, pages, found.notes())
    if strict and corpus.warnings:
        problems = "; ".join(n.text for n in corpus.warnings)
        raise CorpusError(root, "--strict", f"{len(corpus.warnings)} warning(s): {problems}")
    return corpus


def _read_symbols(index_path: Path) -> dict[str, CorpusSymbol]:
    index = _load_json(index_path)
    if not isinstance(index, dict) or not isinstance(index.get("symbols"), dict):
        raise CorpusError(index_path, "top level", "must be an object with a 'symbols' object")
    symbols: dict[str, CorpusSymbol] = {}
    for slug, rec in index["symbols"].items():
        where = f"symbols.{slug}"
        if not isinstance(rec, dict):
            raise CorpusError(index_path, where, "must be an object")
        title = _field(index_path, where, rec, "title", int)
        colour = _field(index_path, where, rec, "color", str)
        if not COLOUR_RE.match(colour):
            raise CorpusError(index_path, where, f"field 'color' must be #RRGGBB, got {colour!r}")
        folder = _field(index_path, where, rec, "characterDir", str)
        listed = _field(index_path, where, rec, "pages", list)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in listed):
            raise CorpusError(index_path, where, "field 'pages' must be a list of integers")
        symbols[slug] = CorpusSymbol(slug, title, colour, folder, tuple(listed))
    return symbols


def _read_record(
    meta_path: Path,
    n: int,
    rec: Any,
    symbols: dict[str, CorpusSymbol],
    seen: dict[str, int],
    found: _Findings,
) -> _Record:
    """Record `n` of metadata/pages.json, checked; its corrections go to `found`."""
    where = f"record {n}"
    if not isinstance(rec, dict):
        raise CorpusError(meta_path, where, "must be an object")
    page_id = str(_field(meta_path, where, rec, "id", (str, int)))
    where = f"record {n} (id {page_id})"
    if not PAGE_ID_RE.match(page_id):
        raise CorpusError(meta_path, where, f"field 'id' {page_id!r} is not a usable page id")
    if page_id in seen:
        raise CorpusError(meta_path, where, f"field 'id' repeats record {seen[page_id]}")
    seen[page_id] = n
    symbol = _field(meta_path, where, rec, "symbolId", str)
    if symbol not in symbols:
        raise CorpusError(meta_path, where, f"field 'symbolId' {symbol!r} is not in index.json")
    title = _field(meta_path, where, rec, "title", str)
    if len(title) > MAX_TITLE:
        raise CorpusError(meta_path, where, f"field 'title' longer than {MAX_TITLE}")
    index_ = _field(meta_path, where, rec, "pageIndex", int)
    chapter = rec.get("chapter")
    if chapter is not None and not isinstance(chapter, str):
        raise CorpusError(meta_path, where, "field 'chapter' must be a string")
    filename = _field(meta_path, where, rec, "filename", str)
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise CorpusError(meta_path, where, f"field 'filename' {filename!r} is not a file name")
    sym = symbols[symbol]
    section = _section(rec, sym, page_id, found)
    _note_colour_and_extras(rec, sym, page_id, found)
    return _Record(where, page_id, symbol, title, index_, section, chapter, filename)


def _section(rec: dict[str, Any], sym: CorpusSymbol, page_id: str, found: _Findings) -> int:
    """The symbol's section: its title number in index.json, whatever the record says."""
    value = rec.get("section")
    if isinstance(value, int) and not isinstance(value, bool):
        if value != sym.title:
            found.add(
                "warning",
                f"section {value} of {sym.slug}'s pages disagrees with index.json, which gives "
                f"{sym.slug} section {sym.title}: used {sym.title}",
                page_id,
            )
        return sym.title
    found.add(
        "corrected",
        f"section {value!r} of {sym.slug}'s pages is not a section number: used {sym.title}, "
        f"{sym.slug}'s title number in index.json",
        page_id,
    )
    return sym.title


def _note_colour_and_extras(
    rec: dict[str, Any], sym: CorpusSymbol, page_id: str, found: _Findings
) -> None:
    colour = rec.get("color")
    if colour is not None and (not isinstance(colour, str) or colour.upper() != sym.colour.upper()):
        found.add(
            "corrected",
            f"color {colour!r} of {sym.slug}'s pages differs from index.json's {sym.colour}: "
            "a page shows its symbol's colour, not stored per page",
            page_id,
        )
    for key in sorted(set(rec) - KNOWN_FIELDS):
        found.add(
            "corrected", f"field {key!r} is not part of a page in this layout: ignored", page_id
        )


def _find_file(root: Path, sym: CorpusSymbol, filename: str) -> Path | None:
    folders = (root / "pages", root, root / sym.folder)
    return next((f / filename for f in folders if (f / filename).is_file()), None)


def _missing_files(meta_path: Path, missing: list[_Record]) -> CorpusError:
    first = missing[0]
    problem = f"field 'filename': {first.filename} not found under pages/"
    if len(missing) > 1:
        ids = _summary([r.page for r in missing])
        problem += f"; {len(missing)} records in all name a page file that is not there: ids {ids}"
    return CorpusError(meta_path, first.where, problem)


def _check_counts(
    index_path: Path, symbols: dict[str, CorpusSymbol], records: list[_Record], found: _Findings
) -> None:
    """index.json's per-symbol `pages` against the records: lengths must agree, numbers should."""
    have: dict[str, collections.Counter[int]] = {s: collections.Counter() for s in symbols}
    for r in records:
        have[r.symbol][r.index] += 1
    wrong = []
    for slug, sym in symbols.items():
        listed = collections.Counter(sym.listed)
        if listed == have[slug]:
            continue
        detail = []
        if listed - have[slug]:
            detail.append(f"listed but no record: {_numbers(listed - have[slug])}")
        if have[slug] - listed:
            detail.append(f"records not listed: {_numbers(have[slug] - listed)}")
        counts = f"index.json lists {len(sym.listed)} pages, pages.json has "
        counts += f"{sum(have[slug].values())} records ({'; '.join(detail)})"
        if len(sym.listed) != sum(have[slug].values()):
            wrong.append(f"{slug}: {counts}")
        else:
            found.add("warning", f"{slug}: pageIndex numbers differ: {counts}")
    if wrong:
        raise CorpusError(
            index_path,
            "pages per symbol",
            "index.json and metadata/pages.json disagree on how many pages a symbol has: "
            + "; ".join(wrong),
        )


def _check_orphans(pages_dir: Path, named: set[str], found: _Findings) -> None:
    if not pages_dir.is_dir():
        return
    for f in sorted(pages_dir.iterdir()):
        if f.name.startswith(".") or f.name in named or not f.is_file():
            continue
        found.add(
            "warning",
            "page files in pages/ that no record of metadata/pages.json names: not imported",
            f.name,
            noun="file",
        )


def _page_text(path: Path) -> str:
    try:
        # bytes, not read_text(): universal newlines would turn CRLF into LF
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(path, "file", f"not UTF-8 ({exc.reason})") from exc
    if len(text) > MAX_PAGE_CHARS:
        raise CorpusError(path, "file", f"longer than {MAX_PAGE_CHARS} characters")
    return text
