"""The personas: which one can ask, and asking one (the answer streams back as it is written)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gibsey.core.envelope import AgentRequest, Event, new_event_id
from gibsey.core.symbols import CHARACTERS
from gibsey.node.gateway.auth import Token
from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.hub import Subscriber
from gibsey.node.gateway.models import AskRequest
from gibsey.node.gateway.openapi import publishes
from gibsey.node.gateway.responses import READ, PersonasAnswer
from gibsey.node.gateway.sse import STREAM_HEADERS, sse
from gibsey.node.gateway.state import GatewayState, State, refusal_of

PERSONAS = tuple(slug for slug, _ in CHARACTERS)
# The model may have to load before the first token; after that, tokens come quickly.
ASK_FIRST_TOKEN_TIMEOUT_S = 60.0
ASK_TOKEN_TIMEOUT_S = 30.0

router = APIRouter(tags=["agents"])


@router.get(
    "/api/agent/personas",
    summary="The personas one can ask",
    response_model=PersonasAnswer,
    **READ,
)
async def personas(gw: State) -> dict[str, Any]:
    return {"running": gw.agents_running(), "personas": list(PERSONAS)}


@router.post(
    "/api/agent/ask",
    summary="Ask a persona; the answer streams back as server-sent events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "event: request, then token events, then done (or error)",
        },
        503: {"description": "the agents part is not running"},
    },
    openapi_extra=publishes("agent/request"),
)
async def ask(body: AskRequest, _: Token, gw: State) -> StreamingResponse:
    if body.persona not in PERSONAS:
        raise ApiError(422, f"unknown persona {body.persona!r}; one of: {', '.join(PERSONAS)}")
    if not gw.agents_running():
        raise ApiError(503, "the agents part is not running on this node")
    correlation = new_event_id()
    sub = gw.hub.subscribe(
        frozenset({"agent/emit"}), lambda e: e.payload.get("correlation") == correlation
    )
    box: dict[str, str] = {}  # the question's event id, once published
    agents = gw.node.parts.agents
    refused = refusal_of(agents.refusal_listeners if agents is not None else None, box)
    try:
        payload = AgentRequest(
            persona=body.persona, prompt=body.prompt, max_tokens=body.max_tokens, correlation=None
        )
        event, acked = await gw.publish_with_id(
            "agent/request", payload, body.actor, box, correlation
        )
    except BaseException:
        gw.hub.unsubscribe(sub)
        refused.cancel()
        raise
    return StreamingResponse(
        _answer(gw, sub, event, correlation, acked, refused),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


async def _answer(
    gw: GatewayState,
    sub: Subscriber,
    event: Event,
    correlation: str,
    acked: bool,
    refused: asyncio.Future[str],
) -> AsyncIterator[bytes]:
    emitted: asyncio.Future[Event | None] | None = None
    try:
        yield sse("request", {"event": event.id, "correlation": correlation, "acked": acked})
        text: list[str] = []
        timeout_s = ASK_FIRST_TOKEN_TIMEOUT_S
        while True:
            emitted = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait(
                (emitted, refused), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if emitted not in done:
                emitted.cancel()
                why = (
                    f"the node refused the question: {refused.result()}"
                    if refused in done
                    else f"the persona did not answer within {timeout_s:g}s"
                )
                yield sse("error", {"error": why})
                return
            got = emitted.result()
            if got is None:
                yield sse("error", {"error": "the node is stopping"})
                return
            timeout_s = ASK_TOKEN_TIMEOUT_S
            p = got.payload
            piece = str(p.get("text", ""))
            if p.get("final"):
                # The final agent/emit carries the whole answer (or nothing new).
                yield sse("done", {"persona": p.get("persona"), "text": piece or "".join(text)})
                return
            text.append(piece)
            yield sse("token", {"seq": p.get("seq"), "text": piece})
    finally:
        if emitted is not None:
            emitted.cancel()  # (the asker gone while it waited)
        gw.hub.unsubscribe(sub)
        refused.cancel()
