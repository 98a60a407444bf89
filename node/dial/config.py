"""The `[dial]` section of gibsey.toml: where the dial bridge (bridge.py) takes frames from.

    [dial]
    serial = "auto"        # "auto": any Pico on USB; a device path; "off": no serial
    baud = 115200
    vid = 0x2e8a           # the USB vendor id "auto" looks for (Raspberry Pi's)
    mqtt = true            # take frames from MQTT too
    scan_interval = 1.0    # seconds between looks for the board
    alert_interval = 10.0  # seconds between alerts of one reason
    max_dials = 16         # dial ids the node keeps; frames of a new id beyond them are refused
    forget_after = 300.0   # seconds a dial may be silent (a live one says hello every 5 s)
                           # before a new id may take its place, and a dial of a run before a
                           # restart, not heard again, is removed; 0: never
    enabled = true         # false: no dial bridge at all

Each key is optional; unknown keys are refused (gibsey.core.config).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from gibsey.core.config import ConfigSection, Seconds, SecondsOrZero

PICO_VID = 0x2E8A


class DialConfig(ConfigSection):
    serial: str = "auto"
    baud: Annotated[int, Field(ge=300, le=4_000_000)] = 115200
    vid: Annotated[int, Field(ge=0, le=0xFFFF)] = PICO_VID  # USB ids are 16 bits
    mqtt: bool = True
    scan_interval: Seconds = 1.0
    alert_interval: SecondsOrZero = 10.0  # 0: every alert
    # A gallery node has one dial or a few; the bound keeps a flood of made-up ids (each a view,
    # retained state and Home Assistant device) from eating the outbox, the broker and memory.
    max_dials: Annotated[int, Field(ge=1, le=1024)] = 16
    forget_after: SecondsOrZero = 300.0  # 0: a known dial is never forgotten
    enabled: bool = True

    @field_validator("serial")
    @classmethod
    def _auto_off_or_a_path(cls, value: str) -> str:
        if value not in ("auto", "off") and not value.startswith("/"):
            raise ValueError(
                f'serial {value!r}: "auto", "off" or the device\'s path, e.g. /dev/ttyACM0'
            )
        return value
