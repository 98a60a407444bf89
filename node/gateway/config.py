"""The gateway's configuration: the `[gateway]` section of gibsey.toml, overridable by env.

    [gateway]
    listen = "0.0.0.0:8080"   # HOST:PORT; port 0 picks a free port; "off" disables the gateway
    token = "..."             # the write token: anything that changes state needs it
    token_file = "/path"      # or read the token from a file (first line), e.g. on the boot card

Environment: `GIBSEY_HTTP` overrides `listen`, `GIBSEY_GATEWAY_TOKEN` the token. `gibsey up`
sets `listen` from `--http` (default 0.0.0.0:8080). A node started in-process without a
`[gateway]` section (most tests) runs no gateway. With no token configured the gateway is
read-only: every change is refused with 401.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gibsey.core.config import ConfigError

DEFAULT_LISTEN = "0.0.0.0:8080"
PORT_FILE = "gateway.json"


class GatewayConfigError(ConfigError):
    pass


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', or '[::1]:PORT') -> (host, port)."""
    value = value.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise GatewayConfigError(f"--http/listen {value!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError as exc:
        raise GatewayConfigError(
            f"--http/listen {value!r}: port {port_text!r} is no number"
        ) from exc
    if not 0 <= port <= 65535:
        raise GatewayConfigError(f"--http/listen {value!r}: port out of range 0..65535")
    return host, port


@dataclass
class GatewayConfig:
    listen: str | None = None
    token: str | None = None
    log_format: str = "text"

    @property
    def enabled(self) -> bool:
        return bool(self.listen) and self.listen != "off"

    @property
    def address(self) -> tuple[str, int]:
        assert self.listen
        return parse_listen(self.listen)

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> GatewayConfig:
        section = extra.get("gateway")
        section = section if isinstance(section, dict) else {}
        listen = os.environ.get("GIBSEY_HTTP") or section.get("listen")
        token = os.environ.get("GIBSEY_GATEWAY_TOKEN") or section.get("token")
        token_file = section.get("token_file")
        if not token and token_file:
            try:
                token = Path(str(token_file)).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise GatewayConfigError(f"[gateway] token_file {token_file!r}: {exc}") from exc
        log_section = extra.get("log")
        log_format = os.environ.get("GIBSEY_LOG_FORMAT") or (
            log_section.get("format") if isinstance(log_section, dict) else None
        )
        cfg = cls(
            listen=str(listen) if listen else None,
            token=str(token) if token else None,
            log_format=str(log_format or "text"),
        )
        if cfg.enabled:
            cfg.address  # noqa: B018 - validate early, with the key's name in the message
        return cfg
