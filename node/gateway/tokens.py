"""The write token: which one a node uses, where it is kept, and whether a request carries it.

A node started with no token configured makes one at its first start and keeps it in
`<data>/gateway.token` (mode 0600): a node started as the README says is never open to whoever
shares its Wi-Fi, and never read-only by accident. `gibsey gateway token` prints it.

    [gateway] token = "..."       # used as given (or GIBSEY_GATEWAY_TOKEN)
    [gateway] token_file = "..."  # its first line (config.py)

A gateway without a token (its data directory could not keep one) is read-only: every change
over HTTP is refused.

This module imports no web framework, so the command line reads it cheaply.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from pathlib import Path

from gibsey.core.identity import write_atomic
from gibsey.node.gateway.config import GatewayConfig

TOKEN_FILE = "gateway.token"
TOKEN_MODE = 0o600
TOKEN_BYTES = 32  # 256 bits, as url-safe base64 (43 characters)


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def read_or_make(data_dir: Path) -> tuple[str, bool]:
    """The token kept in the data directory, made (0600) when there is none yet: (token, made).

    An empty file (a crash before the first write, a technician's `: > gateway.token`) gets a
    new token: an empty token would match nothing and leave the node read-only unnoticed."""
    path = token_path(data_dir)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    if lines and lines[0].strip():
        return lines[0].strip(), False
    token = secrets.token_urlsafe(TOKEN_BYTES)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{token}\n".encode(), mode=TOKEN_MODE)
    return token, True


def node_token(config: GatewayConfig, data_dir: Path) -> tuple[str, str]:
    """The token a node's gateway checks, and where it comes from, in words."""
    if config.token:
        return config.token, "[gateway] token or token_file (or GIBSEY_GATEWAY_TOKEN)"
    token, made = read_or_make(data_dir)
    return token, f"{token_path(data_dir)}{' (made now)' if made else ''}"


def refusal(headers: Mapping[str, str], token: str | None) -> str | None:
    """Why a request with these headers may not change anything; None when it may.

    The token is `Authorization: Bearer <token>` or `X-Gibsey-Token: <token>` (header names
    in lower case, as ASGI and Starlette's Headers give them)."""
    if token is None:
        return "this node is read-only: it has no write token (the node's log says why)"
    given = headers.get("x-gibsey-token")
    auth = headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if not given:
        return "a write token is required (Authorization: Bearer <token>)"
    if not hmac.compare_digest(given.encode(), token.encode()):
        return "the write token is wrong"
    return None
