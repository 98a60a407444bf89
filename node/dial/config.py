"""The `[dial]` section of gibsey.toml: where the dial bridge (bridge.py) takes frames from.

    [dial]
    serial = "auto"        # "auto": any Pico on USB; a device path; "off": no serial
    baud = 115200
    vid = 0x2e8a           # the USB vendor id "auto" looks for (Raspberry Pi's)
    mqtt = true            # take frames from MQTT too
    scan_interval = 1.0    # seconds between looks for the board
    alert_interval = 10.0  # seconds between alerts of one reason
    enabled = true         # false: no dial bridge at all

Each key is optional; unknown keys are refused (gibsey.core.config).
"""

from __future__ import annotations

from gibsey.core.config import ConfigSection

PICO_VID = 0x2E8A


class DialConfig(ConfigSection):
    serial: str = "auto"
    baud: int = 115200
    vid: int = PICO_VID
    mqtt: bool = True
    scan_interval: float = 1.0
    alert_interval: float = 10.0
    enabled: bool = True
