"""The `[watchdog]` section of gibsey.toml: when a crash loop opens a Schrödinger Hearing.

    [watchdog]
    restarts = 5           # more deaths than this within window_minutes open a hearing
    window_minutes = 10

systemd restarts the node (gibsey-node.service); these keys only decide when the room is asked
whether the node should go on as it is (part.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gibsey.core.config import ConfigSection


class WatchdogConfig(ConfigSection):
    restarts: Annotated[int, Field(ge=0, le=1000)] = 5  # 0: the first death opens a hearing
    window_minutes: Annotated[float, Field(gt=0.0, le=7 * 24 * 60.0)] = 10.0  # at most a week
