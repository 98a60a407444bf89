"""The write token: reading is open to anyone on the LAN; every change needs the node's token.

Every endpoint that changes something takes a `_: Token` parameter, so a wrong or missing token
is answered with 401 before anything is published or appended.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.state import State


def require_token(request: Request, gw: State) -> str:
    """`Authorization: Bearer <token>` or `X-Gibsey-Token: <token>`, against the node's."""
    if gw.token is None:
        raise ApiError(
            401,
            "this node is read-only: no write token is configured ([gateway] token in "
            "gibsey.toml, or GIBSEY_GATEWAY_TOKEN)",
        )
    given = request.headers.get("x-gibsey-token")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if not given:
        raise ApiError(401, "a write token is required (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.encode(), gw.token.encode()):
        raise ApiError(401, "the write token is wrong")
    return "token"


Token = Annotated[str, Depends(require_token)]
