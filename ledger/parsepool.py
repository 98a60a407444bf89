"""Parsing a large import on a second core: one worker process per node, shared by its stores.

An import's time is mostly parsing (canonical JSON decoded and re-encoded, the body's rules,
a SHA-256; ~20 us an entry on one core) and the rest is the chain checks and SQLite inserts
(~14 us), all Python under the GIL; with group-head signatures (format v2) only one entry in up
to 64 has a signature to verify. So threads do not help; a process does: the worker parses
(and verifies) chunk k+1 while the importing thread checks and inserts chunk k, and the
importing thread parses the batch's first part itself while the worker starts on the rest.

The worker is `python -m gibsey.ledger.parsepool`, talking over its stdin and stdout (a 4-byte
length, then a pickle: a list of entries' bytes one way, parse_many's tuples back). Not
multiprocessing: its spawn and forkserver children run the parent's main script again (an
unguarded script would start its work twice), and fork would copy the node's threads' locks.
It starts on the first batch large enough to pay for it and lives until this process exits (it
exits by itself when its stdin closes). If it dies or a batch is abandoned half read, it is
stopped, the rest is parsed in the importing thread, and the next batch starts another.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from typing import IO, Any

from .entry import Entry, ParsedFields, from_fields, parse_many
from .errors import Rejected

# A batch this large goes to the worker (a mesh message holds up to 256 entries).
PARALLEL_MIN = 128
CHUNK = 64
_LEN = struct.Struct(">I")

ParseHere = Callable[[list[bytes]], list[Entry | Rejected]]


def _send(out: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


def _receive(inp: IO[bytes]) -> Any:
    head = inp.read(_LEN.size)
    if len(head) != _LEN.size:
        raise EOFError("the parse worker closed its pipe")
    (size,) = _LEN.unpack(head)
    data = inp.read(size)
    if len(data) != size:
        raise EOFError("the parse worker closed its pipe")
    return pickle.loads(data)  # our own child, over its own pipe


class _Worker:
    """The one worker process (made on first use); `lock` is held for a whole batch."""

    lock = threading.Lock()
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def get(cls) -> subprocess.Popen[bytes]:
        """The running worker (hold `lock`)."""
        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen(
                [sys.executable, "-m", "gibsey.ledger.parsepool"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return cls.proc

    @classmethod
    def stop(cls) -> None:
        """Stop the worker (hold `lock`): it died, or its pipe holds answers nobody reads."""
        proc, cls.proc = cls.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                # Closing flushes what the writer thread left buffered into a dead process:
                # a broken pipe here is the death already being handled, nothing to report.
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def warm() -> None:
    """Start the worker now (so a benchmark does not time its start)."""
    with _Worker.lock:
        proc = _Worker.get()
        assert proc.stdin is not None and proc.stdout is not None
        _send(proc.stdin, [])
        _receive(proc.stdout)


def parsed(
    raws: list[bytes], parse_here: ParseHere, *, worker: bool | None = None
) -> Generator[Entry | Rejected, None, None]:
    """Each of `raws` parsed (signatures verified), in order. A batch of at least PARALLEL_MIN
    is parsed mostly by the worker (`worker` True; None: if a core is idle), chunk by chunk,
    while the caller consumes the results; a smaller one is parsed here and now. Close the
    generator when done with it (it holds the worker for the batch): `closing(parsed(...))`."""
    if worker is None:
        worker = _idle_core()
    if not worker or len(raws) < PARALLEL_MIN:
        return _each(parse_here(raws))
    return _pipelined(raws, parse_here)


def _idle_core() -> bool:
    """Whether a core is free for the worker: measured on this 2-core machine, the import takes
    33 us of CPU an entry on one core, and 20 us here plus 22 us in the worker on two - ~1.5x
    the rate when the second core is idle, but 1.35x slower when every core is busy (the
    worker's share then only adds its pickling and pipe)."""
    cores = os.cpu_count() or 1
    return cores > 1 and os.getloadavg()[0] <= cores - 1


def _each(items: list[Entry | Rejected]) -> Generator[Entry | Rejected, None, None]:
    yield from items


def _pipelined(raws: list[bytes], parse_here: ParseHere) -> Generator[Entry | Rejected, None, None]:
    # The importing thread also checks and inserts every entry, so it parses only ~1/8.
    first = max(CHUNK // 2, len(raws) // 8)
    chunks = [raws[i : i + CHUNK] for i in range(first, len(raws), CHUNK)]
    with _Worker.lock:
        proc = _Worker.get()
        assert proc.stdin is not None and proc.stdout is not None
        # A thread writes the chunks so neither pipe can fill while the other waits.
        writer = threading.Thread(target=_write_all, args=(proc.stdin, chunks), daemon=True)
        writer.start()
        done = 0
        try:
            yield from parse_here(raws[:first])
            while done < len(chunks):
                fields: list[ParsedFields] = _receive(proc.stdout)
                done += 1
                for item in fields:
                    yield from_fields(item)
        except (EOFError, OSError, pickle.UnpicklingError):
            _Worker.stop()
            for chunk in chunks[done:]:
                yield from parse_here(chunk)
        finally:
            if done < len(chunks) and _Worker.proc is proc:
                _Worker.stop()  # abandoned half read: its answers would meet the next batch
            writer.join()


def _write_all(out: IO[bytes], chunks: list[list[bytes]]) -> None:
    try:
        for chunk in chunks:
            _send(out, chunk)
    except OSError:  # the worker died: the reader parses the rest itself
        pass


def serve() -> None:
    """The worker's loop: chunks of entries in on stdin, parse_many's tuples out on stdout."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            raws = _receive(inp)
        except EOFError:
            return
        _send(out, parse_many(raws))


if __name__ == "__main__":
    serve()
