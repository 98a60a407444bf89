"""Logs the journal can filter: under systemd each record goes to journald with fields.

A record logged with `extra={...}` carries each of its fields as a journal field `GIBSEY_<NAME>`:
`GIBSEY_KIND` (the event's kind), `GIBSEY_EVENT_ID`, `GIBSEY_RITUAL` (read, write, remember,
dream), `GIBSEY_TRACE_ID` where a record knows its trace, `GIBSEY_ACTOR`, ... so that

    journalctl -u gibsey-node GIBSEY_RITUAL=dream
    journalctl -u gibsey-node GIBSEY_EVENT_ID=0f3c...

find them. Every ritual this node performs is logged once (`ritual dream performed: ...`, with
its kind, ritual and event id) while the journal is the log's sink: that is what the fields are
for, and a turn of the dial is a visitor's pace; on a terminal it would be noise.

When: `[log] format = "journal"`, or the default `text` when stderr is the journal's stream (the
node runs under systemd: `JOURNAL_STREAM` names stderr's device and inode, which a command run
from the unit's shell with its stderr elsewhere does not match). `json` stays JSON lines.

The journal's native protocol is written here, not through the `systemd-python` package: that
package is C built against libsystemd-dev, so the image would carry a compiler and headers (and
the nspawn root a build) for what is one datagram per record to /run/systemd/journal/socket:
`NAME=value` lines, or `NAME`, a 64-bit little-endian length and the bytes for a value with a
newline in it; a record too large for one datagram goes as a sealed memfd (systemd.journal-
fields(7), "Native Journal Protocol"). The socket is non-blocking: when journald falls behind,
a record is dropped, not waited for (the event loop logs), and the next record says how many
were (`GIBSEY_DROPPED`).
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gibsey.core.envelope import Event, Payload, RitualPerformed
from gibsey.core.symbols import ROTATIONS

if TYPE_CHECKING:
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.rituals")

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "gibsey"
# uvicorn's records also carry `color_message`, the message with terminal colour codes: never
# a field of a log line (the message is there without them).
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}
_FIELD_RE = re.compile(r"^[A-Z0-9_]{1,57}$")  # a journal field: 64 characters, GIBSEY_ first
# syslog(3) priorities, which journalctl -p filters on
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """systemd connected stderr to the journal (JOURNAL_STREAM is `device:inode` of it)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def wants_journal(log_format: str, environ: Mapping[str, str] | None = None) -> bool:
    return log_format == "journal" or (log_format == "text" and stderr_is_journal(environ))


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def record_fields(record: logging.LogRecord, message: str) -> list[tuple[str, str]]:
    """The journal fields of one record: the message, its priority, where it was logged, and
    each field the record was logged with (`extra=`) as GIBSEY_<NAME>."""
    fields = [
        ("MESSAGE", message),
        ("PRIORITY", str(_PRIORITY.get(record.levelno, 7))),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("LOGGER", record.name),
        ("CODE_FILE", record.pathname),
        ("CODE_LINE", str(record.lineno)),
        ("CODE_FUNC", record.funcName),
    ]
    for key, value in vars(record).items():
        name = f"GIBSEY_{key.upper()}"
        if key in _STANDARD or key.startswith("_") or not _FIELD_RE.match(key.upper()):
            continue
        if isinstance(value, str | int | float | bool):
            fields.append((name, str(value)))
    return fields


class JournalHandler(logging.Handler):
    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = record_fields(record, self.format(record))
            if self.dropped:
                fields.append(("GIBSEY_DROPPED", str(self.dropped)))
            data = b"".join(_field(k, v) for k, v in fields)
            try:
                self.sock.send(data)
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                self._send_memfd(data)
            self.dropped = 0
        except BlockingIOError:
            self.dropped += 1
        except Exception:
            self.handleError(record)

    def _send_memfd(self, data: bytes) -> None:
        """A record larger than a datagram: its bytes in a sealed memfd, the fd passed."""
        fd = os.memfd_create("gibsey-journal", os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = array.array("i", [fd]).tobytes()
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        super().close()


def use_journal_logs(node: Node, path: str = JOURNAL_SOCKET) -> bool:
    """Replace the root logger's handlers with the journal's, and log each ritual this node
    performs. False (the handlers left as they were, and the log says why) when there is no
    journal to write to."""
    try:
        handler = JournalHandler(path)
    except OSError as exc:
        log.warning("[log] journal: no journal at %s (%s): logging on stderr", path, exc)
        return False
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    node.router.register_inline("ritual-log", ["ritual/performed"], log_ritual)
    return True


def log_ritual(event: Event, payload: Payload) -> None:
    """One record per ritual performed, with the fields journalctl filters on."""
    assert isinstance(payload, RitualPerformed)
    ritual = ROTATIONS[payload.rotation]
    log.info(
        "ritual %s performed: symbol %d for %s (program %s, %d effects%s)",
        ritual,
        payload.symbol,
        event.actor,
        payload.program or "none",
        payload.effects,
        f", error {payload.error}" if payload.error else "",
        extra={"kind": event.kind, "ritual": ritual, "event_id": event.id, "cause": payload.cause},
    )
