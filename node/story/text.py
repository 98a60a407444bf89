"""Word-level diff and three-way merge of page text.

A page is cut into word tokens, each word carrying the whitespace after it (a leading run of
whitespace is a token of its own), so joining the tokens gives the text back exactly. Diffs use
difflib's SequenceMatcher over those tokens; the three-way merge uses `merge3` (the merge of
Bazaar/Breezy) over the same tokens. Word positions in reports are 1-based token indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import merge3

if TYPE_CHECKING:
    from rich.text import Text  # imported by render(): the daemon, which never renders, saves rich

TOKEN_RE = re.compile(r"\s+|\S+\s*")


def tokens(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


@dataclass(frozen=True)
class Hunk:
    """One difference: words [a_start, a_end) of the old text became [b_start, b_end) of the new."""

    tag: Literal["insert", "delete", "replace"]
    a_start: int
    a_end: int
    b_start: int
    b_end: int
    old: str
    new: str


@dataclass(frozen=True)
class WordDiff:
    old: list[str]
    new: list[str]
    opcodes: list[tuple[str, int, int, int, int]]

    @property
    def hunks(self) -> list[Hunk]:
        return [
            Hunk(
                tag,  # type: ignore[arg-type]
                i1,
                i2,
                j1,
                j2,
                "".join(self.old[i1:i2]),
                "".join(self.new[j1:j2]),
            )
            for tag, i1, i2, j1, j2 in self.opcodes
            if tag != "equal"
        ]

    @property
    def changed(self) -> bool:
        return any(op[0] != "equal" for op in self.opcodes)

    @property
    def stats(self) -> tuple[int, int]:
        """(words removed, words added)."""
        removed = sum(i2 - i1 for t, i1, i2, _, _ in self.opcodes if t in ("delete", "replace"))
        added = sum(j2 - j1 for t, _, _, j1, j2 in self.opcodes if t in ("insert", "replace"))
        return removed, added


def word_diff(old: str, new: str) -> WordDiff:
    import difflib  # a diff is asked for now and then: the daemon does without it meanwhile

    a, b = tokens(old), tokens(new)
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return WordDiff(a, b, [(str(t), i1, i2, j1, j2) for t, i1, i2, j1, j2 in sm.get_opcodes()])


def render(diff: WordDiff, context: int = 8) -> Text:
    """The diff as coloured text: removed words red and struck through, added words green;
    unchanged runs longer than 2*context words are elided to their ends."""
    from rich.text import Text

    out = Text()
    ops = diff.opcodes
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            words = diff.old[i1:i2]
            first, last = n == 0, n == len(ops) - 1
            head = 0 if first else context
            tail = 0 if last else context
            if len(words) > head + tail + 1:
                out.append("".join(words[:head]))
                out.append(f"[... {len(words) - head - tail} words ...] ", style="dim")
                out.append("".join(words[len(words) - tail :]))
            else:
                out.append("".join(words))
            continue
        if tag in ("delete", "replace"):
            out.append("".join(diff.old[i1:i2]), style="bold red strike")
        if tag in ("insert", "replace"):
            out.append("".join(diff.new[j1:j2]), style="bold green underline")
    return out


def render_plain(diff: WordDiff, context: int = 8) -> str:
    """The diff for a pipe or a file, marked as git's `--word-diff=plain` marks it: removed words
    as `[-...-]`, added words as `{+...+}`; unchanged runs elided as in `render`."""
    out: list[str] = []
    ops = diff.opcodes
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            words = diff.old[i1:i2]
            head = 0 if n == 0 else context
            tail = 0 if n == len(ops) - 1 else context
            if len(words) > head + tail + 1:
                skipped = f"[... {len(words) - head - tail} words ...] "
                out.append("".join(words[:head]) + skipped + "".join(words[len(words) - tail :]))
            else:
                out.append("".join(words))
            continue
        if tag in ("delete", "replace"):
            out.append("[-" + "".join(diff.old[i1:i2]) + "-]")
        if tag in ("insert", "replace"):
            out.append("{+" + "".join(diff.new[j1:j2]) + "+}")
    return "".join(out)


@dataclass(frozen=True)
class Conflict:
    """Both sides changed the same words of the base differently.

    `start`/`end` are 1-based word positions in the base (end inclusive; start > end means
    both sides inserted different words at the same point, after word `end`)."""

    page: str
    start: int
    end: int
    base: str
    ours: str
    theirs: str

    def describe(self) -> str:
        where = (
            f"words {self.start}-{self.end}"
            if self.start <= self.end
            else f"insertion after word {self.end}"
        )
        return (
            f"page {self.page}, {where}: base {self.base!r}, ours {self.ours!r}, "
            f"theirs {self.theirs!r}"
        )


Prefer = Literal["ours", "theirs"] | None


@dataclass(frozen=True)
class TextMerge:
    text: str  # merged text; at a conflict (not preferred away) ours is kept
    conflicts: list[Conflict]


def merge_text(page: str, base: str, ours: str, theirs: str, prefer: Prefer = None) -> TextMerge:
    """Three-way merge of one page: clean changes of either side applied, overlapping different
    changes reported as conflicts (or settled for one side when `prefer` says so)."""
    if ours == theirs:
        return TextMerge(ours, [])
    if base == ours:
        return TextMerge(theirs, [])
    if base == theirs:
        return TextMerge(ours, [])
    z, a, b = tokens(base), tokens(ours), tokens(theirs)
    out: list[str] = []
    conflicts: list[Conflict] = []
    regions: list[tuple[Any, ...]] = list(merge3.Merge3(z, a, b).merge_regions())
    for region in regions:
        what = region[0]
        if what == "unchanged":
            out.extend(z[region[1] : region[2]])
        elif what in ("a", "same"):
            out.extend(a[region[1] : region[2]])
        elif what == "b":
            out.extend(b[region[1] : region[2]])
        elif what == "conflict":
            zs, ze, as_, ae, bs, be = region[1:7]
            if prefer == "theirs":
                out.extend(b[bs:be])
                continue
            out.extend(a[as_:ae])
            if prefer == "ours":
                continue
            conflicts.append(
                Conflict(
                    page,
                    zs + 1,
                    ze,
                    "".join(z[zs:ze]),
                    "".join(a[as_:ae]),
                    "".join(b[bs:be]),
                )
            )
        else:  # pragma: no cover - merge3 yields only the kinds above
            raise ValueError(f"unknown merge region {what!r}")
    return TextMerge("".join(out), conflicts)
