"""A log line's fields are the record's `extra=` fields, never uvicorn's `color_message` (the
message again with terminal colour codes), in both formats: JSON lines and the journal's."""

from __future__ import annotations

import json
import logging

from gibsey.node.gateway.journal import record_fields
from gibsey.node.gateway.logs import JsonFormatter


def _uvicorn_record() -> logging.LogRecord:
    # What uvicorn's access and error loggers log: the plain message, and the coloured one.
    return logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "Started server process [%d]",
            "args": (42,),
            "color_message": "Started server process [\x1b[36m%d\x1b[0m]",
            "event_id": "e1",
        }
    )


def test_json_lines_carry_no_colour_codes() -> None:
    line = JsonFormatter().format(_uvicorn_record())
    assert "\x1b" not in line and "\\u001b" not in line
    doc = json.loads(line)
    assert doc["msg"] == "Started server process [42]" and doc["event_id"] == "e1"
    assert "color_message" not in doc


def test_journal_fields_carry_no_colour_codes() -> None:
    fields = dict(record_fields(_uvicorn_record(), "Started server process [42]"))
    assert "GIBSEY_COLOR_MESSAGE" not in fields and fields["GIBSEY_EVENT_ID"] == "e1"
