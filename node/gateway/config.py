"""The gateway's sections of gibsey.toml: `[gateway]` and `[log]`.

    [gateway]
    listen = "0.0.0.0:8080"   # HOST:PORT; port 0 picks a free port; "off" disables the gateway
    token = "..."             # the write token: anything that changes state needs it
    token_file = "/path"      # or read the token from a file (first line), e.g. on the boot card

    [log]
    format = "text"           # "json": one JSON object a line (logs.py); "journal": records
                              # to journald with GIBSEY_* fields (journal.py), which "text"
                              # also does when stderr is the journal (under systemd)

Environment: `GIBSEY_HTTP` overrides `listen`, `GIBSEY_GATEWAY_TOKEN` the token,
`GIBSEY_LOG_FORMAT` the log format. `gibsey up` sets `listen` from `--http` (default
0.0.0.0:8080). A node started in-process without a `[gateway]` section (most tests) runs no
gateway. With no token configured the node makes one at its first start, kept in
`<data>/gateway.token` (0600; tokens.py, `gibsey gateway token` prints it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ValidationInfo, field_validator, model_validator

from gibsey.core.config import SECRET, ConfigError, ConfigSection, Env, check_host, reads_files

DEFAULT_LISTEN = "0.0.0.0:8080"
PORT_FILE = "gateway.json"
LISTEN_OFF = "off"


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
    try:
        check_host(host, f"--http/listen {value!r}: host")
    except ValueError as exc:
        raise GatewayConfigError(str(exc)) from None
    return host, port


def _check_listen(value: str | None) -> str | None:
    if value is not None and not value.strip():
        # Empty is no address: it read as the default, every interface, so a stray empty
        # GIBSEY_HTTP opened a gateway the file kept on 127.0.0.1 to the network.
        raise GatewayConfigError(
            f"--http/listen {value!r} is empty: give HOST:PORT (0.0.0.0:8080 for every "
            f"interface) or {LISTEN_OFF!r}; unset GIBSEY_HTTP to keep the file's"
        )
    if value and value != LISTEN_OFF:
        parse_listen(value)
    return value


class GatewayConfig(ConfigSection):
    listen: Annotated[str | None, Env("GIBSEY_HTTP")] = None
    token: Annotated[str | None, Env("GIBSEY_GATEWAY_TOKEN"), SECRET] = None
    # Read when no token is given: its first line is the token.
    token_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.listen) and self.listen != LISTEN_OFF

    @property
    def address(self) -> tuple[str, int]:
        assert self.listen
        return parse_listen(self.listen)

    def listen_on(self, listen: str) -> None:
        """Listen where `gibsey up --http` says, checked as the file's `listen` is."""
        self.listen = _check_listen(listen)

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str | None) -> str | None:
        return _check_listen(value)

    @model_validator(mode="after")
    def _token_from_file(self, info: ValidationInfo) -> GatewayConfig:
        if not self.token and self.token_file and reads_files(info):
            try:
                self.token = Path(self.token_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ValueError(f"token_file {self.token_file!r}: {exc}") from exc
        # An empty token is no token (one is made), never a token that "" would match.
        self.token = self.token or None
        return self


class LogConfig(ConfigSection):
    format: Annotated[Literal["text", "json", "journal"], Env("GIBSEY_LOG_FORMAT")] = "text"
