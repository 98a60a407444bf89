"""What a mesh catch-up of a story corpus holds in memory (a Pi Zero 2 W has 512 MB in all).

Tried (an outside tester): a 710-page, 42.5 MB corpus imported on one node, a fresh node meshed
with it. The receiver's RSS was 326 MB after the sync (12,089 entries) and stayed there (74 MB
after a restart). The entries were bounded in count only: a round of 2,048 entries, an inbox of
4,096, an import of 2,048, and a story's entries are ~4 KiB each (a gift's ~300 B): 8 MB of
raws on their way, 16 MB waiting and ~24 MB parsed per import, on whichever of the pool's
threads ran it (glibc kept each one's arena at that mark). Must hold: the Python memory the
catch-up takes at its peak (both nodes: the sender's round, the receiver's inbox and import)
does not grow with the entries' size past a few MiB, the receiver's inbox stays within its
byte bound, and the corpus arrives whole.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from nacl.signing import SigningKey

from gibsey.ledger.ledger import Ledger
from gibsey.ledger.store import Store
from gibsey.mesh import wire
from gibsey.mesh.config import PeerSpec
from gibsey.mesh.node import INBOX_BYTES, MeshNode
from gibsey.node.story.corpus import read_corpus
from gibsey.node.story.engine import Story
from gibsey.node.story.testing import write_corpus
from tests.mesh_support import quick_mesh_config

MIB = 1024 * 1024
PAGES, WORDS, TIMES = 240, 120, 100  # ~60 KB a page, as the tester's: ~15 MB, ~4,300 entries
# Measured with the corpus above: 29.9 MiB held at the peak before (a round, an inbox and an
# import of 2,048 entries), 5.5 MiB after (their byte bounds: 2 MiB, 2 MiB and 1 MiB).
PEAK_MIB = 12
AUTHOR = SigningKey(bytes([0x51]) * 32)
FRESH = SigningKey(bytes([0x52]) * 32)


def _corpus(root: Path) -> Path:
    corpus = write_corpus(root / "corpus", pages=PAGES, words=WORDS)
    for f in (corpus / "pages").iterdir():
        head, sep, rest = f.read_bytes().partition(b"\n\n")
        f.write_bytes(head + sep + rest * TIMES)
    return corpus


def _imported(root: Path) -> tuple[Store, int]:
    """A node's ledger holding the corpus, imported as `gibsey story import` does."""
    ledger = Ledger.open(root / "old", AUTHOR, synchronous="OFF")
    story = Story(ledger, root / "old")
    story.import_corpus(read_corpus(_corpus(root)), actor="an-author")
    story.close()
    ledger.store.close()
    store = Store.open(root / "old")
    return store, store.count()


async def test_a_story_catch_up_holds_a_bounded_amount_not_rounds_of_big_entries(
    tmp_path: Path,
) -> None:
    serving, entries = _imported(tmp_path)
    raw_bytes = sum(len(r) for r in serving.raws_after(AUTHOR.verify_key.encode(), 0, entries))
    assert entries > 2 * wire.MAX_ROUND and raw_bytes > 12 * MIB  # several rounds of big entries
    fresh = Store.open(tmp_path / "fresh")
    old_key, fresh_key = AUTHOR.verify_key.encode(), FRESH.verify_key.encode()
    old = MeshNode(serving, AUTHOR, quick_mesh_config([], {fresh_key}), listen=True)
    await old.start()
    node = MeshNode(fresh, FRESH, quick_mesh_config([], {old_key}), listen=True)
    await node.start()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await node.sync_once(PeerSpec(old_key, old.endpoint), timeout=100)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        await node.stop()
        await old.stop()
    assert fresh.heads() == serving.heads()
    assert fresh.count() == serving.count() > entries  # (and each node's members entry)
    stats = node.stats
    assert 0 < stats.inbox_peak_bytes <= INBOX_BYTES
    assert peak <= PEAK_MIB * MIB, (
        f"the catch-up of {entries} entries ({raw_bytes / MIB:.1f} MiB) held "
        f"{peak / MIB:.1f} MiB of Python memory at its peak"
    )
    fresh.close()
    serving.close()
