"""Parsing a large import on a second core: one worker process per node, shared by its stores.

An import's time is mostly parsing (canonical JSON decoded and re-encoded, the body's rules,
a SHA-256; ~20 us an entry on one core) and the rest is the chain checks and SQLite inserts
(~14 us), all Python under the GIL; with group-head signatures (format v2) only one entry in up
to 64 has a signature to verify. So threads do not help; a process does: the worker parses
(and verifies) chunk k+1 while the importing thread checks and inserts chunk k, and the
importing thread parses the batch's first part itself while the worker starts on the rest.
The worker holds only a few chunks at a time (WINDOW): when its next answer is not there yet,
the importing thread parses the batch's last chunk not yet sent rather than wait, so the two
share a batch in whatever ratio this machine's load gives them (on a node that also serves
peers, the worker's core is shared, and a fixed split left the importing thread waiting).

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
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import IO, Any

from .entry import Entry, ParsedFields, from_fields, parse_many
from .errors import Rejected

# A batch this large goes to the worker (a mesh message holds up to 256 entries).
PARALLEL_MIN = 128
CHUNK = 64
# Chunks sent to the worker and not yet answered, at most: enough that it never waits for its
# next one, few enough that the batch's tail stays here for the importing thread to take.
WINDOW = 3
_LEN = struct.Struct(">I")
_READ_SIZE = 1 << 20

ParseHere = Callable[[list[bytes]], list[Entry | Rejected]]


def _send(out: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


class _Frames:
    """What _send wrote, read from the pipe's descriptor with a buffer of our own (not the
    pipe's BufferedReader), so whether a whole frame is there can be asked without blocking:
    the worker's answers here, the chunks in the worker."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def _whole(self) -> int:
        """The length of the first frame if the buffer holds all of it, else 0."""
        if len(self._buf) < _LEN.size:
            return 0
        end = _LEN.size + _LEN.unpack_from(self._buf)[0]
        return end if len(self._buf) >= end else 0

    def ready(self) -> bool:
        """Whether a frame can be read now, at most one non-blocking look at the pipe."""
        if self._whole():
            return True
        if select.select([self._fd], [], [], 0)[0]:
            self._fill()
        return bool(self._whole())

    def _fill(self) -> None:
        data = os.read(self._fd, _READ_SIZE)
        if not data:
            raise EOFError("the pipe to or from the parse worker was closed")
        self._buf += data

    def receive(self) -> Any:
        while not (end := self._whole()):
            self._fill()
        data = bytes(self._buf[_LEN.size : end])
        del self._buf[:end]
        return pickle.loads(data)  # our own child or parent, over their own pipe


class _Worker:
    """The one worker process (made on first use); `lock` is held for a whole batch."""

    lock = threading.Lock()
    proc: subprocess.Popen[bytes] | None = None
    answers: _Frames | None = None  # the running worker's stdout

    @classmethod
    def get(cls) -> tuple[subprocess.Popen[bytes], _Frames]:
        """The running worker and its answers (hold `lock`)."""
        if cls.proc is None or cls.answers is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen(
                [sys.executable, "-m", "gibsey.ledger.parsepool"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert cls.proc.stdout is not None
            cls.answers = _Frames(cls.proc.stdout.fileno())
        return cls.proc, cls.answers

    @classmethod
    def stop(cls) -> None:
        """Stop the worker (hold `lock`): it died, or its pipe holds answers nobody reads."""
        proc, cls.proc, cls.answers = cls.proc, None, None
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
        proc, answers = _Worker.get()
        assert proc.stdin is not None
        _send(proc.stdin, [])
        answers.receive()


def parsed(
    raws: list[bytes], parse_here: ParseHere, *, worker: bool | None = None
) -> Generator[Entry | Rejected, None, None]:
    """Each of `raws` parsed (signatures verified), in order. A batch of at least PARALLEL_MIN
    is parsed mostly by the worker (`worker` True; None: if a core is idle), chunk by chunk,
    while the caller consumes the results; a smaller one is parsed here and now. Close the
    generator when done with it (it holds the worker for the batch): `closing(parsed(...))`."""
    # (The gate is asked only of a batch large enough to go to the worker: it samples /proc.)
    if len(raws) < PARALLEL_MIN or not (_idle_core() if worker is None else worker):
        return _each(parse_here(raws))
    return _pipelined(raws, parse_here)


def _idle_core() -> bool:
    """Whether a core is free for the worker: measured on this 2-core machine, the import takes
    33 us of CPU an entry on one core, and 20 us here plus 22 us in the worker on two - ~1.5x
    the rate when the second core is idle, but 1.35x slower when every core is busy (the
    worker's share then only adds its pickling and pipe). So: when what other processes keep
    busy leaves half a core beside the importing one.

    Others' use, not the load average: the 1-min load counts this process's threads and its
    worker too, so a long import by itself kept it above 1 on two cores, and a gate that read
    only the load turned the worker off a minute into every catch-up (`gibsey bench catchup`:
    37 us an entry on one core, 30 with the worker). The load is read only when no batch came
    in the last seconds: this process was quiet, so the load is others'."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return False
    others = _OTHERS.cores()
    if others is None:
        return os.getloadavg()[0] <= cores - 1
    return others <= cores - 1.5


class _OthersUse:
    """Cores other processes kept busy over the last half second or more: the machine's busy
    time (/proc/stat) less this process's and its parse worker's, sampled at large batches."""

    MIN_S = 0.5  # a shorter span is a few clock ticks: too coarse to judge
    STALE_S = 5.0  # an older sample says nothing of now

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None  # (monotonic, busy, ours) then
        self._answer: float | None = None
        self._workers_cpu = 0.0  # CPU of earlier workers, at their last sample
        self._worker: tuple[int, float] = (0, 0.0)  # (pid, CPU seconds) at the last sample
        self._lock = threading.Lock()  # (stores in several threads import at once)

    def cores(self) -> float | None:
        """None: no sample recent enough to compare with (this process was quiet)."""
        with self._lock:
            now = time.monotonic()
            last = self._last
            if last is not None and now - last[0] < self.MIN_S:
                return self._answer
            busy = _machine_busy_s()
            ours = time.process_time() + self._all_workers_cpu()
            self._answer = None
            if busy is not None and last is not None and now - last[0] <= self.STALE_S:
                self._answer = max(0.0, (busy - last[1] - (ours - last[2])) / (now - last[0]))
            self._last = None if busy is None else (now, busy, ours)
            return self._answer

    def _all_workers_cpu(self) -> float:
        proc = _Worker.proc
        pid = 0 if proc is None else proc.pid
        last_pid, last_cpu = self._worker
        if pid != last_pid:  # a new worker (or none): the last one's time is kept
            self._workers_cpu += last_cpu
            last_cpu = 0.0
        cpu = _process_cpu_s(pid) if pid else 0.0
        self._worker = (pid, max(cpu, last_cpu))
        return self._workers_cpu + self._worker[1]


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def _machine_busy_s() -> float | None:
    """CPU seconds every core spent on anything but idling, since boot (None: no /proc)."""
    try:
        with open("/proc/stat", "rb") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_OTHERS = _OthersUse()


def _each(items: list[Entry | Rejected]) -> Generator[Entry | Rejected, None, None]:
    yield from items


def _pipelined(raws: list[bytes], parse_here: ParseHere) -> Generator[Entry | Rejected, None, None]:
    # The importing thread also checks and inserts every entry: it parses the first ~1/8 while
    # the worker starts, then the tail's chunks whenever the worker's next answer is not there.
    first = max(CHUNK // 2, len(raws) // 8)
    chunks = [raws[i : i + CHUNK] for i in range(first, len(raws), CHUNK)]
    sent = done = 0  # chunks[:sent] went to the worker; `done` of them were answered
    end = len(chunks)  # chunks[end:] are parsed here, in `tail` (last first)
    tail: list[list[Entry | Rejected]] = []
    with _Worker.lock:
        proc, answers = _Worker.get()
        assert proc.stdin is not None
        # A thread writes the chunks so neither pipe can fill while the other waits.
        todo: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        writer = threading.Thread(target=_write_all, args=(proc.stdin, todo), daemon=True)
        writer.start()
        try:
            for chunk in chunks[:WINDOW]:
                todo.put(chunk)
            sent = min(WINDOW, end)
            yield from parse_here(raws[:first])
            while done < sent:
                if sent < end and not answers.ready():
                    end -= 1  # the worker is behind: its last chunk is parsed here instead
                    tail.append(parse_here(chunks[end]))
                    continue
                fields: list[ParsedFields] = answers.receive()
                done += 1
                if sent < end:
                    todo.put(chunks[sent])
                    sent += 1
                for item in fields:
                    yield from_fields(item)
        except (EOFError, OSError, pickle.UnpicklingError):
            _Worker.stop()
            for chunk in chunks[done:end]:
                yield from parse_here(chunk)
            done = sent
        finally:
            todo.put(None)
            if done < sent and _Worker.proc is proc:
                _Worker.stop()  # abandoned half read: its answers would meet the next batch
            writer.join()
        for parsed_here in reversed(tail):
            yield from parsed_here


def _write_all(out: IO[bytes], todo: queue.SimpleQueue[list[bytes] | None]) -> None:
    """Send each chunk put in `todo` to the worker, until None."""
    while (chunk := todo.get()) is not None:
        try:
            _send(out, chunk)
        except (OSError, ValueError):  # the worker died, or was stopped (its pipe closed):
            return  # the reader parses the rest itself


def serve() -> None:
    """The worker's loop: chunks of entries in on stdin, parse_many's tuples out on stdout."""
    inp, out = _Frames(sys.stdin.fileno()), sys.stdout.buffer
    while True:
        try:
            raws = inp.receive()
        except EOFError:
            return
        _send(out, parse_many(raws))


if __name__ == "__main__":
    serve()
