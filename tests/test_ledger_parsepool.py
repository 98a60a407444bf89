"""A large import parsed by the worker process (ledger/parsepool.py) gives exactly what parsing
in the importing thread gives - entries, rejections and their reasons, in order - also when the
worker dies or a batch is abandoned half read; and a store importing that way stores the same."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

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


def test_a_worker_that_falls_behind_leaves_the_batch_tail_to_the_importing_thread() -> None:
    """The worker stalled (its core taken by another process, here SIGSTOP): the importing
    thread parses every chunk the worker does not hold yet, from the batch's end, instead of
    waiting; the batch still comes out whole and in order once the worker answers its few."""
    raws = mixed_batch() * 2  # 600 entries: a head, 9 chunks of 64, and a shorter last one
    parsepool.warm()
    proc = parsepool._Worker.proc
    assert proc is not None
    first = max(parsepool.CHUNK // 2, len(raws) // 8)
    chunks = -(-(len(raws) - first) // parsepool.CHUNK)
    parsed_here: list[int] = []
    resumed = threading.Event()

    def resume() -> None:
        if not resumed.is_set():
            resumed.set()
            proc.send_signal(signal.SIGCONT)

    def stalled_here(batch: list[bytes]) -> list[Entry | Rejected]:
        parsed_here.append(len(batch))
        if len(parsed_here) == 1 + chunks - parsepool.WINDOW:  # the head and the whole tail
            resume()
        return here(batch)

    proc.send_signal(signal.SIGSTOP)
    safety = threading.Timer(10.0, resume)  # (so a failing run ends instead of hanging)
    safety.start()
    try:
        with closing(parsepool.parsed(raws, stalled_here, worker=True)) as it:
            got = list(it)
    finally:
        safety.cancel()
        resume()
    assert same(got, here(raws))
    # The worker parsed exactly the chunks it held when it stalled, and nothing more.
    assert len(raws) - sum(parsed_here) == parsepool.WINDOW * parsepool.CHUNK
    assert len(parsed_here) == 1 + chunks - parsepool.WINDOW


def test_the_chunk_writer_ends_quietly_when_the_worker_was_stopped_under_it() -> None:
    """A batch abandoned half read stops the worker, closing its pipe while the writer thread
    may still be sending chunks: the writer ends there, no exception in its thread."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = os.fdopen(write_end, "wb")
    pipe.close()
    todo: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
    todo.put([b"an entry"])
    todo.put(None)
    parsepool._write_all(pipe, todo)  # returns: the reader parses the rest itself


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


def _measured_others(others: parsepool._OthersUse) -> float:
    """Others' cores over one sampling span (the gate's own minimum), as the gate reads it."""
    assert others.cores() is None  # the first sample: nothing to compare with yet
    deadline = time.monotonic() + others.MIN_S
    while time.monotonic() < deadline:  # (a span to measure over, not a wait for an event)
        time.sleep(0.05)
    got = others.cores()
    assert got is not None
    return got


def test_cores_kept_busy_by_other_processes_keep_the_worker_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another program keeping every core busy (a persona generating, say): a large import
    parses in the importing thread, where the worker would only add its pickling and pipe."""
    cores = os.cpu_count() or 1
    spin = [sys.executable, "-c", "while True: pass"]
    busy = [subprocess.Popen(spin) for _ in range(cores)]
    try:
        others = parsepool._OthersUse()
        monkeypatch.setattr(parsepool, "_OTHERS", others)
        used = _measured_others(others)
        assert used >= cores - 1  # (the spinners share the cores with whatever else runs)
        assert parsepool._idle_core() is False
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_the_importing_process_own_busy_core_is_not_counted_as_others() -> None:
    """The import itself keeps a core busy (and the 1-min load above 1 on two cores): the gate
    takes this process's CPU time off the machine's, so a node catching up alone keeps its
    worker."""
    others = parsepool._OthersUse()
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            pass

    burner = threading.Thread(target=burn)
    ours0, busy0 = time.process_time(), parsepool._machine_busy_s()
    burner.start()
    try:
        used = _measured_others(others)
    finally:
        stop.set()
        burner.join()
    ours, busy = time.process_time() - ours0, parsepool._machine_busy_s()
    assert busy is not None and busy0 is not None
    assert ours > 0.3  # this process really kept a core busy over the span
    # Others' cores are at most the machine's busy time less most of what this process used.
    span = others.MIN_S
    assert used <= (busy - busy0 - 0.8 * ours) / span + 0.2
