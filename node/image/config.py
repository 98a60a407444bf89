"""The SD image's sections of gibsey.toml: `[wifi]` and `[image]`, applied by first boot.

    [wifi]                 # optional: wired Ethernet needs nothing
    ssid = "Gallery"
    psk = "secret"         # 8 to 63 characters (WPA2); leave it out for an open network
    country = "GB"         # the regulatory domain, two capital letters

    [image]
    read_only = true       # read-only root with a RAM overlay (power-cut safe); the default.
                           # First boot puts `init=/usr/sbin/gibsey-overlayroot` in (or takes it
                           # out of) cmdline.txt and reboots once when it changed it.

First boot (firstboot.py) checks both before it copies the file into /etc.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Annotated

from pydantic import field_validator

from gibsey.core.config import SECRET, ConfigSection


class WifiConfig(ConfigSection):
    ssid: str
    psk: Annotated[str, SECRET] = ""
    country: str = ""

    @field_validator("ssid")
    @classmethod
    def _ssid_length(cls, value: str) -> str:
        if not 1 <= len(value.encode()) <= 32:
            raise ValueError("ssid must be 1 to 32 bytes")
        return value

    @field_validator("psk")
    @classmethod
    def _wpa2_length(cls, value: str) -> str:
        if value and not 8 <= len(value) <= 63:
            raise ValueError("psk must be 8 to 63 characters (WPA2)")
        return value

    @field_validator("country")
    @classmethod
    def _two_capitals(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError('country must be two capital letters, e.g. "GB"')
        return value


# The read-only root on the Debian image: images/build/gibsey-overlayroot, run as PID 1 before
# systemd when the kernel's command line (cmdline.txt on the boot partition) says `init=` it.
OVERLAY_INIT = "/usr/sbin/gibsey-overlayroot"

# How the image commands say what they do: a line at a time, as it happens.
Log = Callable[[str], None]


def stamped_log(line: str) -> None:
    """One progress line with the wall-clock time: builds and boots take minutes, and a
    technician reading the output piped to a file wants to see where the time went."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def cmdline_with_overlay(cmdline: str, read_only: bool) -> str:
    """cmdline.txt with the read-only root's `init=` word put in or taken out (one line, the
    other words and their order kept: the Pi's firmware reads the first line only)."""
    words = [w for w in cmdline.split() if w != f"init={OVERLAY_INIT}"]
    return " ".join([*words, *([f"init={OVERLAY_INIT}"] if read_only else [])]) + "\n"


class ImageConfig(ConfigSection):
    read_only: bool = True
