"""The `[watchdog]` section of gibsey.toml: when a crash loop opens a Schrödinger Hearing.

    [watchdog]
    restarts = 5           # more deaths than this within window_minutes open a hearing
    window_minutes = 10

systemd restarts the node (gibsey-node.service); these keys only decide when the room is asked
whether the node should go on as it is (part.py).
"""

from __future__ import annotations

from gibsey.core.config import ConfigSection


class WatchdogConfig(ConfigSection):
    restarts: int = 5
    window_minutes: float = 10.0
