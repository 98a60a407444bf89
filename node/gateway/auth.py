"""The write token: reading is open to anyone on the LAN; every change needs the node's token.

The token is checked twice, the same way (tokens.refusal): first by the BodyGuard middleware
(middleware.py), before a write's body is read, so a stranger cannot make the node hold a large
body; then by each endpoint that changes something, which takes a `_: Token` parameter, so an
endpoint can never be reached without it (and the OpenAPI document says so). A wrong or missing
token is answered with 401 before anything is published or appended. GraphQL's mutations are
refused by the schema itself (node/story/graphql.py) on the same check (graphql_route.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.state import State
from gibsey.node.gateway.tokens import refusal


def require_token(request: Request, gw: State) -> str:
    """`Authorization: Bearer <token>` or `X-Gibsey-Token: <token>`, against the node's."""
    reason = refusal(request.headers, gw.token)
    if reason is not None:
        raise ApiError(401, reason)
    return "token"


Token = Annotated[str, Depends(require_token)]
