"""A large import parsed by the worker process (ledger/parsepool.py) gives exactly what parsing
in the importing thread gives - entries, rejections and their reasons, in order - also when the
worker dies or a batch is abandoned half read; and a store importing that way stores the same."""

from __future__ import annotations

import signal
from contextlib import closing
from pathlib import Path

from gibsey.ledger import parsepool
from gibsey.ledger.entry import Entry, parse
from gibsey.ledger.errors import Rejected
from gibsey.ledger.store import Store
from gibsey.ledger.testing import FeedWriter, forge

MINT = {"actor": "london-fox", "amount": 1, "ritual": "read"}


def here(raws: list[bytes]) -> list[Entry | Rejected]:
    out: list[Entry | Rejected] = []
    for raw in raws:
        try:
            out.append(parse(raw))
        except Rejected as exc:
            out.append(exc)
    return out


def mixed_batch() -> list[bytes]:
    """300 entries: v2 groups, with a malformed one, a forged signature and an unknown type."""
    writer = FeedWriter(71)
    raws = [writer.next("mint", MINT, head=i % 64 == 63 or i == 299).raw for i in range(300)]
    raws[40] = b"not an entry"
    raws[63] = raws[63][:-1] + bytes([raws[63][-1] ^ 1])  # a head's signature broken
    obj = {"author": writer.author.hex(), "body": {}, "head": True, "lamport": 1}
    obj |= {"prev": None, "seq": 1, "type": "spell", "v": 2, "wall": 0}
    raws[200] = forge(writer.key, obj)
    return raws


def same(got: list[Entry | Rejected], want: list[Entry | Rejected]) -> bool:
    def key(x: Entry | Rejected) -> object:
        return (x.reason, x.detail) if isinstance(x, Rejected) else x

    return [key(x) for x in got] == [key(x) for x in want]


def test_the_worker_parses_exactly_as_the_importing_thread() -> None:
    raws = mixed_batch()
    with closing(parsepool.parsed(raws, here, worker=True)) as it:
        got = list(it)
    assert parsepool._Worker.proc is not None  # the batch went through the worker
    want = here(raws)
    assert same(got, want)
    assert sum(isinstance(x, Rejected) for x in got) == 3


def test_a_dead_worker_or_an_abandoned_batch_loses_nothing() -> None:
    raws = mixed_batch()
    parsepool.warm()
    proc = parsepool._Worker.proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with closing(parsepool.parsed(raws, here, worker=True)) as it:
        assert same(list(it), here(raws))  # parsed in this thread instead
    with closing(parsepool.parsed(raws, here, worker=True)) as it:
        next(it)  # half read, then closed: its answers must not reach the next batch
    reversed_raws = raws[::-1]
    with closing(parsepool.parsed(reversed_raws, here, worker=True)) as it:
        assert same(list(it), here(reversed_raws))


def test_a_store_importing_through_the_worker_stores_the_same(tmp_path: Path) -> None:
    writer = FeedWriter(72)
    raws = [writer.next("mint", MINT, head=i % 64 == 63 or i == 999).raw for i in range(1000)]
    stores = [
        Store.open(tmp_path / name, parse_process=on) for name, on in (("a", True), ("b", False))
    ]
    for store in stores:
        for i in range(0, len(raws), 256):
            store.import_many(raws[i : i + 256])
    heads = [s.heads() for s in stores]
    assert heads[0] == heads[1] == {writer.author.hex(): 1000}
    assert all(s.verify().ok and s.pending() == 0 for s in stores)
