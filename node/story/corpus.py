"""Read a corpus in the public Gibsey layout, checking everything before anything is imported.

    DIR/index.json            {"symbols": {slug: {"title": int, "color": "#RRGGBB",
                                                   "characterDir": str, "pages": [int, ...]}}}
    DIR/metadata/pages.json   [{"id", "symbolId", "title", "color", "pageIndex", "section",
                                "chapter"?, "filename"}, ...]
    DIR/pages/<filename>      one Markdown file per page (also looked for in DIR/ and in the
                              symbol's characterDir)

A malformed corpus raises CorpusError naming the file, the record and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import MAX_PAGE_CHARS, MAX_TITLE, PAGE_ID_RE, PageVersion, StoryError

SAMPLE = Path(__file__).parent / "sample_corpus"
COLOUR_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")


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


@dataclass(frozen=True)
class Corpus:
    root: Path
    symbols: dict[str, CorpusSymbol]
    pages: list[PageVersion]  # in corpus order


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise CorpusError(path, "file", "missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
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


def read_corpus(root: Path) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(root, "directory", "not a directory")
    symbols = _read_symbols(root / "index.json")
    meta_path = root / "metadata" / "pages.json"
    records = _load_json(meta_path)
    if not isinstance(records, list):
        raise CorpusError(meta_path, "top level", "must be a list of page records")
    pages: list[PageVersion] = []
    seen: dict[str, int] = {}  # page id -> the record that named it first
    for n, rec in enumerate(records):
        pages.append(_read_page(root, meta_path, n, rec, symbols, seen))
    if not pages:
        raise CorpusError(meta_path, "top level", "no pages")
    return Corpus(root, symbols, pages)


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
        symbols[slug] = CorpusSymbol(slug, title, colour, folder)
    return symbols


def _read_page(
    root: Path,
    meta_path: Path,
    n: int,
    rec: Any,
    symbols: dict[str, CorpusSymbol],
    seen: dict[str, int],
) -> PageVersion:
    """Record `n` of metadata/pages.json, checked, with its page's text."""
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
    section = _field(meta_path, where, rec, "section", int)
    chapter = rec.get("chapter")
    if chapter is not None and not isinstance(chapter, str):
        raise CorpusError(meta_path, where, "field 'chapter' must be a string")
    filename = _field(meta_path, where, rec, "filename", str)
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise CorpusError(meta_path, where, f"field 'filename' {filename!r} is not a file name")
    folders = (root / "pages", root, root / symbols[symbol].folder)
    found = next((f / filename for f in folders if (f / filename).is_file()), None)
    if found is None:
        raise CorpusError(meta_path, where, f"field 'filename': {filename} not found under pages/")
    return PageVersion(page_id, symbol, title, index_, _page_text(found), section, chapter)


def _page_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(path, "file", f"not UTF-8 ({exc.reason})") from exc
    if len(text) > MAX_PAGE_CHARS:
        raise CorpusError(path, "file", f"longer than {MAX_PAGE_CHARS} characters")
    return text
