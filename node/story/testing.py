"""Corpora for tests and benchmarks: any number of generated pages in the public Gibsey layout.

The words are drawn deterministically from a small vocabulary; nothing of the real book is used.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from gibsey.core.symbols import CHARACTERS

WORDS = (
    "the dial turned once and the room went quiet a page remembered what the visitor forgot "
    "every branch of the story hung in the air like a coat on a hook waiting for a vote "
    "light rain on the gallery roof ledger lamp mirror queue station envelope violet amber"
).split()


def page_text(rng: random.Random, words: int) -> str:
    lines = []
    for start in range(0, words, 12):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(min(12, words - start))))
    return "\n".join(lines) + "\n"


def write_corpus(root: Path, pages: int = 710, words: int = 120, seed: int = 9) -> Path:
    """Write `pages` pages spread over the 16 character symbols, in corpus order."""
    rng = random.Random(seed)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "pages").mkdir(exist_ok=True)
    per = -(-pages // len(CHARACTERS))
    index: dict[str, Any] = {"symbols": {}}
    records = []
    n = 0
    for t, (slug, colour) in enumerate(CHARACTERS, 1):
        ids = []
        for i in range(1, per + 1):
            if n == pages:
                break
            n += 1
            pid = f"{n:03d}"
            filename = f"{pid}-{slug}.md"
            (root / "pages" / filename).write_text(f"# {slug} {i}\n\n" + page_text(rng, words))
            records.append(
                {
                    "id": pid,
                    "symbolId": slug,
                    "title": f"{slug} {i}",
                    "color": colour,
                    "pageIndex": i,
                    "section": t,
                    "filename": filename,
                }
            )
            ids.append(i)
        index["symbols"][slug] = {
            "title": t,
            "color": colour,
            "characterDir": f"characters/{slug}",
            "pages": ids,
        }
    (root / "index.json").write_text(json.dumps(index, indent=1))
    (root / "metadata" / "pages.json").write_text(json.dumps(records, indent=1))
    return root


def replace_word(text: str, position: int, word: str) -> str:
    """`text` with its `position`-th word (0-based, counting words only) replaced by `word`."""
    parts = text.split(" ")
    parts[position % len(parts)] = word
    return " ".join(parts)
