"""The entry log: acknowledged entries kept on disk between the ledger's SQLite commits.

Why (gibsey bench wear): a SQLite commit writes whole 4 KiB pages to its WAL, one or more per
B-tree it touches (the table, the key, the fold order index) and page 1, however few entries it
holds: ~8 pages for a 2 s group of ~10 entries, 4 KB a turn for a ~300 B entry. Appending the
group's bytes to this file and fdatasyncing it writes about the group's own size, rounded up to
whole pages, and the SQLite commit, made every `[node] ledger_commit_every_s`, carries many
groups at once.

A record is `length (u32, big-endian) | crc32 of the entry (u32) | the entry's bytes`. Each
append (a group) ends on a 4 KiB boundary, padded with zero bytes (a length of 0: read on from
the next boundary): fdatasync writes whole pages, and a group that began in the page the last
one ended in would write that page a second time (~300 B a turn more in `gibsey bench wear`).
A record cut short or damaged (a power cut during an append, which was then never acknowledged;
or a card that damaged a page) is skipped, and reading goes on at the next page boundary, where
every later append begins: one bad byte (in a record, or in a group's padding) costs at most its
own append, not every acknowledged one after it (`skipped` says where; the store says so).
Records are whole entries in their wire form, so folding the log back into the store is an
ordinary import, every check included.

Who may touch it (store.py): only the holder of SQLite's write lock appends to, folds or empties
it, so two processes never race on it. The file is emptied, never replaced: another process may
hold it open for appending (O_APPEND writes go to the end, wherever that now is).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from gibsey.core.storage import disk_write, fsync_directory, write_all

from .entry import MAX_ENTRY_BYTES

SUFFIX = ".entrylog"  # beside ledger.sqlite3 (SQLite's own names end -wal, -shm, -journal)
_HEADER = struct.Struct(">II")
PAGE = 4096  # the page cache's, and the kernel's unit of writing a file out


# Every entry's wire bytes begin so (canonical JSON, its keys sorted: CANONICAL.md section 2).
ENTRY_START = b'{"author":"'


def _next_record(data: bytes, start: int) -> int:
    """Where the next whole record begins at or after `start` (its header's length and crc
    fit the entry that follows), else the end of `data`. Only places where an entry's first
    bytes follow a header are tried: a crc over every byte offset would cost seconds."""
    find = start + _HEADER.size
    while (mark := data.find(ENTRY_START, find)) >= 0:
        at = mark - _HEADER.size
        length, crc = _HEADER.unpack_from(data, at)
        raw = data[mark : mark + length]
        if 0 < length <= MAX_ENTRY_BYTES and len(raw) == length and zlib.crc32(raw) == crc:
            return at
        find = mark + 1
    return len(data)


class EntryLog:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._what = f"the ledger's entry log {self.path}"  # (in a refused write's message)
        self._fd: int | None = None
        # Where the last read() met records cut short or damaged: (offset, bytes skipped) each.
        self.skipped: list[tuple[int, int]] = []

    def _open(self) -> int:
        if self._fd is None:
            created = not os.path.exists(self.path)
            with disk_write(self._what):
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if created:
                    # The file's name must survive a power cut too, or the fsynced records in
                    # it are unreachable.
                    fsync_directory(os.path.dirname(self.path) or ".")
            self._fd = fd
        return self._fd

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def append(self, raws: Sequence[bytes]) -> None:
        """Write these entries' records and fdatasync: once this returns they survive kill -9
        and a power cut. One run of bytes in the file, padded to the next page boundary."""
        if not raws:
            return
        data = b"".join(_HEADER.pack(len(r), zlib.crc32(r)) + r for r in raws)
        fd = self._open()
        with disk_write(self._what):
            end = os.fstat(fd).st_size
            pad = -(end + len(data)) % PAGE
            if 0 < pad < 4:  # room for a whole zero length, or none at all
                pad += PAGE
            data += bytes(pad)
            try:
                write_all(fd, data)
                os.fdatasync(fd)
            except OSError:
                # Not acknowledged: cut off what part of it was written, or the records of a
                # later append (once the disk has room) would follow a torn one, and reading
                # stops at a torn record.
                os.ftruncate(fd, end)
                raise

    def read(self) -> list[bytes]:
        """The entries of every whole record. Damaged bytes (a record cut short or failing its
        crc, or padding that is not all zeros) are skipped to the next whole record (noted in
        `skipped`): the next one of the same append, found by its entry's first bytes, else
        the next append's, at a page boundary. Skipping to the next page alone lost every
        record of a group that runs over several pages (an outside tester: one flipped byte,
        53 whole records after it read as damage)."""
        self.skipped = []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out: list[bytes] = []
        at = 0
        while at + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, at)
            next_page = at + (-at % PAGE or PAGE)
            if length == 0 and not data[at:next_page].strip(b"\0"):  # the padding after a group
                at = next_page
                continue
            raw = data[at + _HEADER.size : at + _HEADER.size + length]
            if length > MAX_ENTRY_BYTES or len(raw) < length or zlib.crc32(raw) != crc:
                whole = _next_record(data, at + 1)
                self.skipped.append((at, whole - at))
                at = whole
                continue
            out.append(raw)
            at += _HEADER.size + length
        if data[at:].strip(b"\0"):  # a header cut short
            self.skipped.append((at, len(data) - at))
        return out

    def clear(self) -> None:
        """Empty the log (every entry in it is in a committed SQLite transaction)."""
        if self.size() == 0:
            return
        with disk_write(self._what):
            os.truncate(self.path, 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
