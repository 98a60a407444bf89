"""Story objects (page versions and commits), their content hashes, and how they ride the ledger.

An object is a canonical JSON document (the ledger's own canonical encoding, CANONICAL.md s.2);
its name is the SHA-256 of those bytes. Ledger bodies are limited to 4 KiB, so an object travels
as `story-object` entries, each carrying one part of its text (parts are cut on character
boundaries so each part's JSON string stays under the body limit). A receiver reassembles the
parts of one author, checks the hash, and only then knows the object. See STORY.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from gibsey.core.actors import ACTOR_RE
from gibsey.ledger import canonical
from gibsey.ledger.bodies import BRANCH_RE, STORY_CHUNK_CHARS, STORY_MAX_PARTS

CANON = "main"  # the branch the room governs: it moves only by a passed narrative-merge hearing
PAGE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_PAGE_CHARS = 256 * 1024
MAX_TITLE = 512
# Bytes a part's JSON string may take inside a story-object body (the body limit is 4096).
CHUNK_BYTES = 3800


class StoryError(ValueError):
    """A story operation was refused; the message says why. Nothing was changed."""


class UnknownPage(StoryError):
    pass


class UnknownRef(StoryError):
    pass


class UnrelatedHistories(StoryError):
    pass


_CHAPTER_NUMBER = re.compile(r"\d+")


def reading_key(
    section: int | None, chapter: str | None, index: int, page: str
) -> tuple[int, int, str, int, str]:
    """Where a page version stands in the corpus's reading order: by section, then chapter,
    then index. The published corpus numbers a chapter's pages from 1 (glyph-marrow's "Chapter
    1" to "Chapter 4" each start again), so section and index alone shuffled its chapters page
    by page; a chapter is ordered by its first number ("Chapter 12" after "Chapter 2")."""
    number = _CHAPTER_NUMBER.search(chapter or "")
    return (section or 0, int(number.group()) if number else 0, chapter or "", index, page)


def check_branch(name: str) -> str:
    if not BRANCH_RE.match(name):
        raise StoryError(
            f"bad branch name {name!r}: lowercase letters, digits and . _ / -, at most 64"
        )
    return name


def check_actor(name: str) -> str:
    if not ACTOR_RE.match(name):
        raise StoryError(f"bad actor {name!r}: lowercase letters, digits and : . _ -, at most 64")
    return name


def check_page_id(page: str) -> str:
    if not PAGE_ID_RE.match(page):
        raise StoryError(f"bad page id {page!r}: letters, digits and . _ -, at most 128")
    return page


@dataclass(frozen=True)
class PageVersion:
    """One version of one page: its text and the metadata the corpus gives it."""

    page: str
    symbol: str
    title: str
    index: int
    text: str
    section: int | None = None
    chapter: str | None = None

    def to_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "kind": "page",
            "id": self.page,
            "symbol": self.symbol,
            "title": self.title,
            "index": self.index,
            "text": self.text,
        }
        if self.section is not None:
            obj["section"] = self.section
        if self.chapter is not None:
            obj["chapter"] = self.chapter
        return obj

    def with_text(self, text: str) -> PageVersion:
        return PageVersion(
            self.page, self.symbol, self.title, self.index, text, self.section, self.chapter
        )

    @property
    def hash(self) -> str:
        return object_hash(self.to_object())


@dataclass(frozen=True)
class Commit:
    """A step of a branch: the pages it changes relative to its first parent.

    `parents` is empty for a root (an import), one for a write, two for a merge (the branch
    merged into first, then the merged branch; `source` names the latter)."""

    parents: tuple[str, ...]
    branch: str
    author: str
    message: str
    changes: dict[str, str]  # page id -> version hash
    source: str | None = None

    def to_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "kind": "commit",
            "parents": list(self.parents),
            "branch": self.branch,
            "author": self.author,
            "message": self.message,
            "changes": dict(self.changes),
        }
        if self.source is not None:
            obj["source"] = self.source
        return obj

    @property
    def hash(self) -> str:
        return object_hash(self.to_object())


def encode_object(obj: dict[str, Any]) -> bytes:
    return canonical.encode(obj)


def object_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(encode_object(obj)).hexdigest()


def _json_len(s: str) -> int:
    return len(json.dumps(s, ensure_ascii=False).encode()) - 2


def chunk_text(text: str) -> list[str]:
    """Cut `text` into parts whose JSON string encodings each fit in CHUNK_BYTES."""
    parts: list[str] = []
    i = 0
    while i < len(text):
        n = min(STORY_CHUNK_CHARS, len(text) - i)
        while True:
            size = _json_len(text[i : i + n])
            if size <= CHUNK_BYTES:
                break
            n = max(1, min(n - 1, n * CHUNK_BYTES // size))
        parts.append(text[i : i + n])
        i += n
    return parts or [""]


def object_entries(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The `story-object` ledger bodies that carry `obj`."""
    data = encode_object(obj)
    h = hashlib.sha256(data).hexdigest()
    parts = chunk_text(data.decode("utf-8"))
    if len(parts) > STORY_MAX_PARTS:
        raise StoryError(f"object of {len(data)} bytes needs more than {STORY_MAX_PARTS} parts")
    return [
        ("story-object", {"hash": h, "part": i, "parts": len(parts), "data": p})
        for i, p in enumerate(parts)
    ]


def parse_object(data: str, expected: str) -> dict[str, Any]:
    """Decode reassembled object text; raise StoryError unless it is canonical and named
    `expected` and has the shape of a page version or a commit."""
    raw = data.encode("utf-8")
    if hashlib.sha256(raw).hexdigest() != expected:
        raise StoryError("parts do not hash to the object's name")
    try:
        obj = canonical.decode(raw)
    except canonical.CanonicalError as exc:
        raise StoryError(f"object is not canonical JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise StoryError("object is not a JSON object")
    kind = obj.get("kind")
    if kind == "page":
        _check_page(obj)
    elif kind == "commit":
        _check_commit(obj)
    else:
        raise StoryError(f"unknown object kind {kind!r}")
    return obj


def _need(obj: dict[str, Any], key: str, typ: type, what: str) -> Any:
    v = obj.get(key)
    if type(v) is not typ:
        raise StoryError(f"{what}: field {key!r} must be {typ.__name__}")
    return v


def _check_page(obj: dict[str, Any]) -> None:
    allowed = {"kind", "id", "symbol", "title", "index", "text", "section", "chapter"}
    if set(obj) - allowed:
        raise StoryError(f"page: unexpected fields {sorted(set(obj) - allowed)}")
    if not PAGE_ID_RE.match(_need(obj, "id", str, "page")):
        raise StoryError("page: bad id")
    _need(obj, "symbol", str, "page")
    if len(_need(obj, "title", str, "page")) > MAX_TITLE:
        raise StoryError("page: title too long")
    _need(obj, "index", int, "page")
    if len(_need(obj, "text", str, "page")) > MAX_PAGE_CHARS:
        raise StoryError("page: text too long")
    if "section" in obj:
        _need(obj, "section", int, "page")
    if "chapter" in obj:
        _need(obj, "chapter", str, "page")


def _check_commit(obj: dict[str, Any]) -> None:
    allowed = {"kind", "parents", "branch", "author", "message", "changes", "source"}
    if set(obj) - allowed:
        raise StoryError(f"commit: unexpected fields {sorted(set(obj) - allowed)}")
    parents = _need(obj, "parents", list, "commit")
    if len(parents) > 2 or any(type(p) is not str or len(p) != 64 for p in parents):
        raise StoryError("commit: parents must be at most two hashes")
    if not BRANCH_RE.match(_need(obj, "branch", str, "commit")):
        raise StoryError("commit: bad branch")
    if not ACTOR_RE.match(_need(obj, "author", str, "commit")):
        raise StoryError("commit: bad author")
    if len(_need(obj, "message", str, "commit")) > 1000:
        raise StoryError("commit: message too long")
    changes = _need(obj, "changes", dict, "commit")
    for page, version in changes.items():
        if not PAGE_ID_RE.match(page) or type(version) is not str or len(version) != 64:
            raise StoryError(f"commit: bad change {page!r}")
    if "source" in obj:
        if len(parents) != 2 or not BRANCH_RE.match(_need(obj, "source", str, "commit")):
            raise StoryError("commit: a source branch only on a merge (two parents)")


def page_from_object(obj: dict[str, Any]) -> PageVersion:
    return PageVersion(
        obj["id"],
        obj["symbol"],
        obj["title"],
        obj["index"],
        obj["text"],
        obj.get("section"),
        obj.get("chapter"),
    )


def commit_from_object(obj: dict[str, Any]) -> Commit:
    return Commit(
        tuple(obj["parents"]),
        obj["branch"],
        obj["author"],
        obj["message"],
        dict(obj["changes"]),
        obj.get("source"),
    )
