"""The SD image's sections of gibsey.toml: `[wifi]` and `[image]`, applied by first boot.

    [wifi]                 # optional: wired Ethernet needs nothing
    ssid = "Gallery"
    psk = "secret"         # 8 to 63 characters (WPA2); leave it out for an open network
    country = "GB"         # the regulatory domain, two capital letters

    [image]
    read_only = true       # read-only root with a RAM overlay (power-cut safe)

First boot (firstboot.py) checks both before it copies the file into /etc.
"""

from __future__ import annotations

import re
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


class ImageConfig(ConfigSection):
    read_only: bool = True
