"""/graphql: the narrative engine's strawberry schema (gibsey.node.story.graphql), served by the
gateway. Every mutation publishes narrative/change through the node; resolvers run on the loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from gibsey.core.envelope import NarrativeChange
from gibsey.node.gateway.errors import ApiError
from gibsey.node.story.graphql import StoryContext, context_for, schema
from gibsey.node.story.model import StoryError

if TYPE_CHECKING:
    from gibsey.node.daemon import Node

log = logging.getLogger("gibsey.gateway")


class StoryGraphQL(GraphQL[StoryContext, None]):
    """strawberry's plain ASGI app: its context may be any object (the FastAPI router insists on
    a dict or BaseContext, and the story's resolvers expect their StoryContext)."""

    def __init__(self, node: Node) -> None:
        super().__init__(schema)
        self.node = node

    def publish(
        self, change: str, branch: str, page: str | None, version: str | None, actor: str
    ) -> None:
        payload = NarrativeChange(branch=branch, page=page, version=version, change=change)
        event = self.node.emit("narrative/change", payload, actor=actor)
        log.info(
            "published narrative/change %s for %s",
            event.id,
            actor,
            extra={"event_id": event.id, "kind": "narrative/change", "actor": actor},
        )

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> StoryContext:
        try:
            return context_for(self.node.parts.story, self.publish)
        except StoryError as exc:
            raise ApiError(503, f"the narrative engine is not running: {exc}") from exc


def graphql_route(node: Node) -> Route:
    # A route, not a mount: /graphql itself answers (a mount would redirect to /graphql/).
    return Route("/graphql", StoryGraphQL(node), methods=["GET", "POST"], name="graphql")
