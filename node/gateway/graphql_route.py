"""/graphql: the narrative engine's strawberry schema (gibsey.node.story.graphql), served by the
gateway.

Queries are open, as every read is; a mutation needs the node's write token, checked as REST's
writes are (tokens.refusal): without it the schema refuses the mutation before anything runs,
and the answer is 401 with one GraphQL error. The schema bounds what one operation costs (its
document, depth, aliases and answer); each operation runs in a worker thread, at most
MAX_RUNNING at once, so that SQLite and a large answer never hold the node's event loop (status,
the spine, the dial go on meanwhile). Every mutation publishes narrative/change through the node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException  # strawberry's own (its dependency)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gibsey.core.envelope import NarrativeChange
from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.tokens import refusal
from gibsey.node.story.graphql import WRITE_REFUSED, StoryContext, context_for, schema
from gibsey.node.story.model import StoryError

if TYPE_CHECKING:
    from gibsey.node.gateway.state import GatewayState

log = logging.getLogger("gibsey.gateway")

MAX_RUNNING = 2  # operations at once (each in a worker thread); the rest wait their turn
PUBLISH_TIMEOUT_S = 10.0


def _refused_for_token(result: ExecutionResult) -> bool:
    return any((e.extensions or {}).get("code") == WRITE_REFUSED for e in result.errors or ())


class InvalidBody(HTTPException):
    """A body that is no JSON Python can read, answered as REST answers one (errors._invalid):
    an `error` and a `detail` naming the body and the problem."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, f"invalid request: the body is not valid JSON ({problem})")
        self.detail = [{"field": "body", "problem": problem}]


class StoryGraphQL(GraphQL[StoryContext, None]):
    """strawberry's plain ASGI app: its context may be any object (the FastAPI router insists on
    a dict or BaseContext, and the story's resolvers expect their StoryContext)."""

    def __init__(self, state: GatewayState) -> None:
        super().__init__(schema)
        self.state = state
        self.running = asyncio.Semaphore(MAX_RUNNING)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # strawberry answers its own refusals (no query, a GET mutation, bad JSON) in plain
        # text: here they are JSON with an `error`, as every other answer of the gateway.
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope=scope, receive=receive))
        except InvalidBody as exc:
            body = {"error": exc.reason, "detail": exc.detail}
            response = JSONResponse(body, status_code=exc.status_code)
        except HTTPException as exc:
            response = JSONResponse({"error": exc.reason}, status_code=exc.status_code)
        await response(scope, receive, send)

    def decode_json(self, data: str | bytes) -> object:
        try:
            decoded = super().decode_json(data)
        except UnicodeDecodeError as exc:  # a ValueError strawberry does not answer: a 500
            raise HTTPException(400, "invalid request: the body is not UTF-8") from exc
        except RecursionError as exc:
            # json.loads recurses once per array or object opened: ~1,000 of them (a 3 KB body,
            # from anyone: queries need no token) exhaust Python's stack, which strawberry
            # does not answer either (a 500 and two tracebacks). The client's error, not ours.
            raise InvalidBody("nested too deep") from exc
        except ValueError as exc:
            # Python refuses to read an integer of more than 4,300 digits (a ValueError inside
            # json.loads, not a JSONDecodeError): the request is invalid, not the node broken.
            if "integer string conversion" in str(exc):
                raise HTTPException(422, "invalid request: a number has too many digits") from exc
            raise
        # strawberry reads the body's fields with .get: JSON that is no object (null, a string,
        # a list: no batching here) would end in an AttributeError, a 500 and two tracebacks.
        if not isinstance(decoded, dict):
            raise HTTPException(400, 'invalid request: the body is a JSON object {"query": ...}')
        return decoded

    def publish(
        self, change: str, branch: str, page: str | None, version: str | None, actor: str
    ) -> None:
        """A mutation's narrative/change, from the worker thread the mutation runs in: emitted
        on the node's loop (node.emit is not thread-safe), waited for so that a failure to
        publish is the mutation's error."""
        payload = NarrativeChange.model_validate(
            {"branch": branch, "page": page, "version": version, "change": change}
        )
        assert self.loop is not None
        done = asyncio.run_coroutine_threadsafe(self._emit(payload, actor), self.loop)
        done.result(PUBLISH_TIMEOUT_S)

    async def _emit(self, payload: NarrativeChange, actor: str) -> None:
        event = self.state.node.emit("narrative/change", payload, actor=actor)
        log.info(
            "published narrative/change %s for %s",
            event.id,
            actor,
            extra={"event_id": event.id, "kind": "narrative/change", "actor": actor},
        )

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> StoryContext:
        reason = refusal(request.headers, self.state.token)
        try:
            return context_for(
                self.state.node.parts.story, self.publish, may_write=reason is None, refusal=reason
            )
        except StoryError as exc:
            raise ApiError(503, f"the narrative engine is not running: {exc}") from exc

    async def execute_single(  # strawberry's signature
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: StoryContext,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """strawberry's, but in a worker thread (`execute_sync`): resolvers block on SQLite."""
        allowed = OperationType.from_http(request_adapter.method)
        self.loop = asyncio.get_running_loop()
        args: tuple[Any, ...] = (
            request_data.query,
            request_data.variables,
            context,
            root_value,
            request_data.operation_name,
            allowed,
            request_data.extensions,
        )
        try:
            async with self.running:
                result = await asyncio.to_thread(self.schema.execute_sync, *args)
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from exc
        except InvalidOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason(request_adapter.method)) from exc
        except MissingQueryError as exc:
            raise HTTPException(400, "no GraphQL query found in the request") from exc
        if _refused_for_token(result):
            sub_response.status_code = 401
            sub_response.headers["WWW-Authenticate"] = "Bearer"
            client = request.client.host if request.client else "?"
            detail = f"a GraphQL mutation from {client}: {context.refusal}"
            self.state.refused("http_unauthorized", detail)
        return result
