"""Structured logs: one JSON object a line, for the journal (`[log] format = "json"`).

Every record carries its logger, level and message; a record logged with
`extra={"event_id": ...}` (the gateway does so for every event it publishes) carries the event
id as its own field, so `journalctl -u gibsey -o cat | jq 'select(.event_id == "...")'` finds
what happened to one event. Under systemd the timestamp is the journal's; `ts` is advisory.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# uvicorn's records also carry `color_message`, the message with terminal colour codes: never
# a field of a log line (the message is there without them).
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}
# Fields that are copied when a record carries them (logged with extra={...}).
STRUCTURED = ("event_id", "kind", "actor", "path", "status", "method", "node")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def use_json_logs(level: int | None = None) -> None:
    """Replace the root logger's handlers with one JSON-lines handler on stderr."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)


def monotonic_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
