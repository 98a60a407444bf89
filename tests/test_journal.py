"""The journal's native protocol as node/gateway/journal.py writes it, read back from a datagram
socket the way journald reads /run/systemd/journal/socket (systemd.journal-fields(7)). No
journald runs on this machine; tests/test_supervision.py shows the real one filtering on the
fields (`journalctl -u gibsey-node GIBSEY_RITUAL=dream`)."""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from gibsey.node.gateway.journal import JournalHandler, stderr_is_journal, wants_journal


def parse(data: bytes) -> dict[str, str]:
    """One native-protocol datagram: fields `NAME=value\\n`, or `NAME\\n`, a u64le length, the
    bytes and `\\n`."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            name, value = line, data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            i = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


def receive(sock: socket.socket, memfd: bool = False) -> dict[str, str]:
    """A datagram, or (`memfd`) the contents of the sealed memfd passed in it (a large record)."""
    data, anc, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    assert bool(anc) == memfd, anc
    if anc:
        [(level, kind, raw)] = anc
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fd = array.array("i", raw[:4])[0]
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    return parse(data)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, logging.Logger, JournalHandler]]:
    path = str(tmp_path / "journal.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    handler = JournalHandler(path)
    logger = logging.getLogger(f"gibsey.test.journal.{tmp_path.name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield sock, logger, handler
    finally:
        logger.removeHandler(handler)
        handler.close()
        sock.close()


def test_a_record_carries_its_fields(
    journal: tuple[socket.socket, logging.Logger, JournalHandler],
) -> None:
    """A record logged with kind, ritual, event id and trace id reaches the journal as
    GIBSEY_KIND, GIBSEY_RITUAL, GIBSEY_EVENT_ID, GIBSEY_TRACE_ID beside MESSAGE and PRIORITY."""
    sock, logger, _ = journal
    extra = {"kind": "ritual/performed", "ritual": "dream", "event_id": "e1", "trace_id": "t1"}
    logger.warning("ritual %s performed", "dream", extra=extra)
    fields = receive(sock)
    assert fields["MESSAGE"] == "ritual dream performed"
    assert (fields["PRIORITY"], fields["SYSLOG_IDENTIFIER"]) == ("4", "gibsey")
    assert fields["LOGGER"] == logger.name
    assert (fields["GIBSEY_KIND"], fields["GIBSEY_RITUAL"]) == ("ritual/performed", "dream")
    assert (fields["GIBSEY_EVENT_ID"], fields["GIBSEY_TRACE_ID"]) == ("e1", "t1")


def test_a_multi_line_record_and_a_large_one_arrive_whole(
    journal: tuple[socket.socket, logging.Logger, JournalHandler],
) -> None:
    """A traceback (newlines: the length-prefixed form) and a record larger than the socket
    takes in one datagram (a sealed memfd) arrive whole."""
    sock, logger, _ = journal
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("it failed")
    fields = receive(sock)
    assert fields["MESSAGE"].startswith("it failed\nTraceback")
    assert fields["MESSAGE"].endswith("ValueError: boom\nsecond line")
    large = "x" * (sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) * 2)
    logger.info("%s", large, extra={"event_id": "big"})
    fields = receive(sock, memfd=True)
    assert (fields["MESSAGE"], fields["GIBSEY_EVENT_ID"]) == (large, "big")


def test_a_journal_that_falls_behind_loses_records_not_time(
    journal: tuple[socket.socket, logging.Logger, JournalHandler],
) -> None:
    """Nobody reads the socket: records are dropped (never waited for) once its queue is full,
    and the first record that gets through says how many were."""
    sock, logger, handler = journal
    sent = 0
    while handler.dropped == 0:
        logger.info("record %d", sent)
        sent += 1
    logger.info("one more")  # dropped as well
    assert handler.dropped == 2
    queued = sent - 1
    for _ in range(queued):
        receive(sock)
    logger.info("after")
    fields = receive(sock)
    assert (fields["MESSAGE"], fields["GIBSEY_DROPPED"]) == ("after", "2")
    assert handler.dropped == 0


def test_journal_or_not(tmp_path: Path) -> None:
    """`journal` always; `text` when stderr is the stream JOURNAL_STREAM names; `json` never."""
    st = os.fstat(2)
    mine = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
    assert stderr_is_journal(mine) and not stderr_is_journal(other)
    assert not stderr_is_journal({})
    assert wants_journal("journal", {}) and wants_journal("text", mine)
    assert not wants_journal("text", other) and not wants_journal("json", mine)
