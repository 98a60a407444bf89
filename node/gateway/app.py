"""The gateway's HTTP application (FastAPI): REST under /api/, live streams, metrics, dashboard.

Reading is open to anyone on the LAN; every endpoint that changes something needs the node's
write token (`Authorization: Bearer <token>` or `X-Gibsey-Token`), publishes at least one event
on the spine (declared per operation in the OpenAPI document as `x-gibsey-events`), and answers
401 without touching anything when the token is wrong or missing. Errors are JSON objects with an
`error` field that says what was wrong; a failure inside the node is logged with its traceback
and answered with a bare 500, never the traceback.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import importlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gibsey import __version__
from gibsey.core.envelope import (
    PAYLOADS,
    AgentRequest,
    Event,
    GiftTxn,
    GlyphRotated,
    HearingOpened,
    HearingVote,
    Payload,
    new_event_id,
)
from gibsey.core.symbols import BY_SLUG, CHARACTERS, ROTATIONS, SYMBOLS
from gibsey.ledger.bodies import ACTIONS, CHOICES
from gibsey.ledger.errors import LedgerError, Overdraw, Rejected

if TYPE_CHECKING:
    from gibsey.ledger.entry import Entry
    from gibsey.ledger.ledger import Ledger
    from gibsey.node.daemon import Node
    from gibsey.node.gateway.hub import Hub
    from gibsey.node.gateway.metrics import Metrics
    from gibsey.node.story.engine import Story

log = logging.getLogger("gibsey.gateway")

STATIC = Path(__file__).parent / "static"
ACK_TIMEOUT = 5.0
RITUAL_TIMEOUT = 5.0
ASK_FIRST_TOKEN_TIMEOUT = 60.0
ASK_TOKEN_TIMEOUT = 30.0
HEARTBEAT = 15.0
PERSONAS = tuple(slug for slug, _ in CHARACTERS)
EVENTS_EXT = "x-gibsey-events"

Actor = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]


class ApiError(Exception):
    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.extra = extra


# -- request and response models ---------------------------------------------------------------


class Strict(BaseModel):
    model_config = {"extra": "forbid"}


class RotateRequest(Strict):
    symbol: int | str = Field(
        description="base symbol 0..63, or a symbol's slug (e.g. london-fox)", examples=[3]
    )
    rotation: int | Literal["read", "write", "remember", "dream"] = Field(
        description="0 Read, 1 Write, 2 Remember, 3 Dream (or the name)", examples=[2]
    )
    source: Annotated[str, Field(max_length=64)] = "gateway"
    actor: Actor = "gateway"


class AskRequest(Strict):
    persona: str = Field(description="a character symbol's slug", examples=["london-fox"])
    prompt: Annotated[str, Field(min_length=1, max_length=16_384)]
    max_tokens: Annotated[int, Field(ge=1, le=2048)] = 128
    actor: Actor = "gateway"


class GiftRequest(Strict):
    giver: Actor
    receiver: Actor
    amount: Annotated[int, Field(gt=0, le=1_000_000_000)]
    memo: Annotated[str, Field(max_length=256)] | None = None


class ProposeRequest(Strict):
    action: Literal["narrative-merge", "opcode-table-change", "config-change"]
    target: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the change")]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    proposer: Actor


class VoteRequest(Strict):
    actor: Actor
    choice: Literal["yes", "no"]


class Published(BaseModel):
    event: str = Field(description="id of the event published")
    kind: str
    acked: bool = Field(description="the broker acknowledged it (QoS 1)")


class RotateResponse(Published):
    symbol: int
    rotation: int
    state: int
    ritual: dict[str, Any] | None = Field(None, description="ritual/performed, with ?wait=true")


class LedgerWrite(Published):
    entry: str
    seq: int
    lamport: int
    applied: bool
    note: str = ""


assert tuple(ACTIONS) == ("narrative-merge", "opcode-table-change", "config-change")
assert tuple(CHOICES) == ("yes", "no")


# -- helpers ------------------------------------------------------------------------------------


def _require_token(request: Request) -> str:
    gateway: GatewayApp = request.app.state.gateway
    return gateway.require_token(request)


# Every endpoint that changes something takes a `_: Token` parameter (checked before the body).
Token = Annotated[str, Depends(_require_token)]


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "body"


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', '')})")
        elif e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",):
            parts.append("a JSON body is required")
        else:
            parts.append(f"{_field_path(e.get('loc', ()))}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _symbol_of(value: int | str) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(SYMBOLS):
            raise ApiError(422, f"symbol {value} is out of range 0..{len(SYMBOLS) - 1}")
        return value
    sym = BY_SLUG.get(value)
    if sym is None:
        if value.isdigit():
            return _symbol_of(int(value))
        raise ApiError(422, f"unknown symbol {value!r} (0..63 or a slug like london-fox)")
    return sym.id


def _rotation_of(value: int | str) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(ROTATIONS):
            raise ApiError(
                422, f"rotation {value} is out of range 0..3 (read/write/remember/dream)"
            )
        return value
    return ROTATIONS.index(value)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _event_json(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json")


class MetricsMiddleware:
    """Counts requests and their latency (to the response head) by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                self.metrics.latency.labels(path).observe(time.perf_counter() - start)
                self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            await send(message)

        await self.app(scope, receive, sending)


# -- the application ----------------------------------------------------------------------------


class GatewayApp:
    def __init__(self, node: Node, hub: Hub, metrics: Metrics, token: str | None) -> None:
        self.node = node
        self.hub = hub
        self.metrics = metrics
        self.token = token
        self.graphql_problem = ""
        self.app = self._build()

    # -- access ---------------------------------------------------------------------------------
    def require_token(self, request: Request) -> str:
        """A dependency of every endpoint that changes something."""
        if self.token is None:
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
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, "the write token is wrong")
        return "token"

    # -- publishing -----------------------------------------------------------------------------
    async def publish(self, kind: str, payload: Payload, actor: str) -> tuple[Event, bool]:
        """Put one event on the spine and wait (briefly) for the broker's acknowledgement."""
        return await self.publish_with_id(kind, payload, actor, {})

    async def announce_entry(
        self, entry: Entry, kind: str, payload: Payload, actor: str
    ) -> LedgerWrite:
        """Publish the event for a ledger entry just appended, and say what the entry did."""
        eff = self.ledger().view().effects.get(entry.hash)
        event, acked = await self.publish(kind, payload, actor)
        return LedgerWrite(
            event=event.id,
            kind=kind,
            acked=acked,
            entry=entry.hash_hex,
            seq=entry.seq,
            lamport=entry.lamport,
            applied=bool(eff and eff.applied),
            note=eff.note if eff else "",
        )

    def ledger(self) -> Ledger:
        ledger = self.node.parts.ledger
        if ledger is None:
            raise ApiError(503, "the ledger part is not running on this node")
        return ledger

    def parts(self) -> dict[str, bool]:
        node: Any = self.node
        return {
            "ledger": node.ledger is not None,
            "runtime": node.runtime is not None,
            "mesh": getattr(node, "mesh", None) is not None,
            "agents": self.agents_running(),
            "story": getattr(node, "story", None) is not None,
            "graphql": not self.graphql_problem,
            "dial": getattr(node, "dial", None) is not None
            or any(r.name.startswith("dial") for r in node.router.registrations),
        }

    def agents_running(self) -> bool:
        return any(
            "agent/request" in r.kinds and r.name != "gateway"
            for r in self.node.router.registrations
        ) or any(
            name != "gateway" for name, _h, _l in self.node.router._inline.get("agent/request", [])
        )

    # -- building the app -----------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(
            title="Gibsey node gateway",
            version=__version__,
            description=(
                "REST for one Gibsey node. Reads are open; anything that changes state needs the "
                "node's write token and publishes the events named in `x-gibsey-events`."
            ),
            docs_url=None,  # Swagger UI loads from a CDN: a gallery has no internet
            redoc_url=None,
        )
        app.state.gateway = self
        app.add_middleware(MetricsMiddleware, metrics=self.metrics)
        self._errors(app)
        self._routes(app)
        self._graphql(app)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        return app

    def _errors(self, app: FastAPI) -> None:
        async def api_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, ApiError)
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse(
                {"error": exc.error, **exc.extra}, status_code=exc.status, headers=headers
            )

        async def invalid(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, RequestValidationError)
            errors = list(exc.errors())
            status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
            detail = [
                {
                    "field": "body"
                    if e.get("type") == "json_invalid"
                    else _field_path(e.get("loc", ())),
                    "problem": str(e.get("msg", "")),
                }
                for e in errors[:20]
            ]
            return JSONResponse(
                {"error": f"invalid request: {_describe(errors)}", "detail": detail},
                status_code=status,
            )

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, StarletteHTTPException)
            message = {
                404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}",
            }.get(exc.status_code, str(exc.detail))
            return JSONResponse(
                {"error": message}, status_code=exc.status_code, headers=exc.headers
            )

        async def crashed(request: Request, exc: Exception) -> Response:
            log.exception("gateway: %s %s failed", request.method, request.url.path)
            return JSONResponse(
                {"error": "internal error in the node (logged); nothing more is said here"},
                status_code=500,
            )

        app.add_exception_handler(ApiError, api_error)
        app.add_exception_handler(RequestValidationError, invalid)
        app.add_exception_handler(StarletteHTTPException, http_error)
        app.add_exception_handler(Exception, crashed)

    def _routes(self, app: FastAPI) -> None:
        gw = self

        def mutating(*kinds: str) -> dict[str, Any]:
            return {
                "openapi_extra": {EVENTS_EXT: list(kinds), "security": [{"token": []}]},
                "responses": {
                    401: {"description": "missing or wrong write token; nothing changed"},
                    422: {"description": "the request is invalid; the error says why"},
                },
            }

        # -- the page and the machine-readable things ------------------------------------------
        @app.get("/", include_in_schema=False)
        async def dashboard() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

        # -- status -----------------------------------------------------------------------------
        @app.get("/api/status", tags=["node"], summary="The node: identity, broker, parts, glyph")
        async def status() -> dict[str, Any]:
            node = gw.node
            stats = node.router.stats
            spine = node.spine
            return {
                **node.status().model_dump(),
                "connected": bool(spine and spine.connected),
                "parts": gw.parts(),
                "glyph": gw.hub.glyph_view(),
                "router": {
                    "accepted": stats.accepted,
                    "duplicates": stats.duplicates,
                    "rejected": dict(stats.rejected),
                    "queue_depth": node.router.queue_depth(),
                },
                "writable": gw.token is not None,
                "kinds": sorted(PAYLOADS),
            }

        @app.get("/api/symbols", tags=["glyph"], summary="The 64 base symbols and 4 rotations")
        async def symbols() -> dict[str, Any]:
            return {
                "rotations": list(ROTATIONS),
                "symbols": [
                    {"id": s.id, "slug": s.slug, "colour": s.colour, "character": s.is_character}
                    for s in SYMBOLS
                ],
            }

        @app.get("/api/glyph", tags=["glyph"], summary="The dial's current glyph and rotation")
        async def glyph() -> dict[str, Any]:
            return gw.hub.glyph_view()

        @app.post(
            "/api/glyph/rotate",
            tags=["glyph"],
            summary="Turn the glyph dial (publishes glyph/rotated; the node runs the ritual)",
            status_code=202,
            **mutating("glyph/rotated"),
        )
        async def rotate(
            body: RotateRequest,
            _: Token,
            wait: Annotated[
                bool, Query(description="wait for the ritual/performed and return it")
            ] = False,
        ) -> RotateResponse:
            symbol, rotation = _symbol_of(body.symbol), _rotation_of(body.rotation)
            payload = GlyphRotated(symbol=symbol, rotation=rotation, source=body.source)
            ritual: dict[str, Any] | None = None
            if not wait:
                event, acked = await gw.publish("glyph/rotated", payload, body.actor)
            else:
                box: dict[str, str] = {}
                sub = gw.hub.subscribe(
                    frozenset({"ritual/performed"}),
                    lambda e: e.node == gw.node.node_id and e.payload.get("cause") == box.get("id"),
                )
                try:
                    event, acked = await gw.publish_with_id(
                        "glyph/rotated", payload, body.actor, box
                    )
                    try:
                        got = await asyncio.wait_for(sub.queue.get(), RITUAL_TIMEOUT)
                        ritual = dict(got.payload) if got is not None else None
                    except TimeoutError:
                        ritual = None
                finally:
                    gw.hub.unsubscribe(sub)
            return RotateResponse(
                event=event.id,
                kind="glyph/rotated",
                acked=acked,
                symbol=symbol,
                rotation=rotation,
                state=symbol * 4 + rotation,
                ritual=ritual,
            )

        # -- events -----------------------------------------------------------------------------
        @app.get("/api/events", tags=["events"], summary="Recent events seen on the spine")
        async def events(
            limit: Annotated[int, Query(ge=1, le=200)] = 50,
            kind: Annotated[str | None, Query(max_length=64)] = None,
        ) -> list[dict[str, Any]]:
            items = [e for e in gw.hub.recent if kind is None or e.kind == kind]
            return [_event_json(e) for e in items[-limit:]]

        @app.get(
            "/api/events/stream",
            tags=["events"],
            summary="Live events as server-sent events (event: <kind>, data: envelope)",
            response_class=StreamingResponse,
        )
        async def stream(
            request: Request,
            kinds: Annotated[
                str | None, Query(description="comma-separated kinds, default all")
            ] = None,
            recent: Annotated[int, Query(ge=0, le=200)] = 0,
        ) -> StreamingResponse:
            wanted = None
            if kinds:
                wanted = frozenset(k.strip() for k in kinds.split(",") if k.strip())
                unknown = sorted(wanted - set(PAYLOADS))
                if unknown:
                    raise ApiError(422, f"unknown event kind(s): {', '.join(unknown)}")
            sub = gw.hub.subscribe(wanted)
            backlog = [e for e in gw.hub.recent if wanted is None or e.kind in wanted]
            backlog = backlog[-recent:] if recent else []
            return StreamingResponse(
                gw._stream(request, sub, backlog),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        # -- agents -----------------------------------------------------------------------------
        @app.get("/api/agent/personas", tags=["agents"], summary="The personas one can ask")
        async def personas() -> dict[str, Any]:
            return {"running": gw.agents_running(), "personas": list(PERSONAS)}

        @app.post(
            "/api/agent/ask",
            tags=["agents"],
            summary="Ask a persona; the answer streams back as server-sent events",
            response_class=StreamingResponse,
            responses={
                200: {
                    "content": {"text/event-stream": {}},
                    "description": "event: request, then token events, then done (or error)",
                },
                503: {"description": "the agents part is not running"},
            },
            **{k: v for k, v in mutating("agent/request").items() if k != "responses"},
        )
        async def ask(request: Request, body: AskRequest, _: Token) -> StreamingResponse:
            if body.persona not in PERSONAS:
                raise ApiError(
                    422, f"unknown persona {body.persona!r}; one of: {', '.join(PERSONAS)}"
                )
            if not gw.agents_running():
                raise ApiError(503, "the agents part is not running on this node")
            correlation = new_event_id()
            sub = gw.hub.subscribe(
                frozenset({"agent/emit"}),
                lambda e: e.payload.get("correlation") == correlation,
            )
            try:
                payload = AgentRequest(
                    persona=body.persona,
                    prompt=body.prompt,
                    max_tokens=body.max_tokens,
                    correlation=None,
                )
                event, acked = await gw.publish_with_id(
                    "agent/request", payload, body.actor, {}, correlation
                )
            except BaseException:
                gw.hub.unsubscribe(sub)
                raise
            return StreamingResponse(
                gw._answer(sub, event, correlation, acked),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        # -- ledger -----------------------------------------------------------------------------
        @app.get("/api/ledger/balances", tags=["ledger"], summary="Balances in this node's view")
        async def balances() -> dict[str, Any]:
            econ = gw.ledger().view().economy
            ordered = dict(sorted(econ.balances.items(), key=lambda kv: (-kv[1], kv[0])))
            return {
                "balances": ordered,
                "minted": econ.minted,
                "burned": econ.burned,
                "supply": econ.supply,
            }

        @app.get("/api/ledger/entries", tags=["ledger"], summary="Ledger entries, in fold order")
        async def entries(
            limit: Annotated[int, Query(ge=1, le=500)] = 50,
            type: Annotated[str | None, Query(max_length=32)] = None,
            author: Annotated[str | None, Query(pattern=r"^[0-9a-f]{1,64}$")] = None,
        ) -> dict[str, Any]:
            ledger = gw.ledger()
            view = ledger.view()
            last: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
            total = 0
            for e in ledger.store.iter_ordered():
                if type and e.type != type:
                    continue
                if author and not e.author_hex.startswith(author):
                    continue
                total += 1
                eff = view.effects.get(e.hash)
                last.append(
                    {
                        "hash": e.hash_hex,
                        "author": e.author_hex,
                        "ours": e.author == ledger.author,
                        "seq": e.seq,
                        "lamport": e.lamport,
                        "type": e.type,
                        "body": e.body,
                        "applied": None if eff is None else eff.applied,
                        "note": "" if eff is None else eff.note,
                    }
                )
            return {"total": total, "entries": list(last)}

        @app.post(
            "/api/ledger/gift",
            tags=["ledger"],
            summary="Gift tokens from one actor to another (must be covered)",
            status_code=201,
            **mutating("gift/txn"),
        )
        async def gift(body: GiftRequest, _: Token) -> LedgerWrite:
            ledger = gw.ledger()
            e = gw._ledger_call(
                lambda: ledger.gift(body.giver, body.receiver, body.amount, body.memo)
            )
            txn = GiftTxn(
                type="gift",
                giver=body.giver,
                receiver=body.receiver,
                amount=body.amount,
                entry=e.hash_hex[:64],
            )
            return await gw.announce_entry(e, "gift/txn", txn, body.giver)

        @app.get("/api/ledger/proposals", tags=["governance"], summary="Schrödinger hearings")
        async def proposals(
            all: Annotated[bool, Query(description="include expired/failed/void")] = False,
        ) -> list[dict[str, Any]]:
            gov = gw.ledger().view().governance
            out = []
            for p in sorted(gov.proposals.values(), key=lambda p: p.lamport):
                if not all and p.status.value not in ("open", "passed"):
                    continue
                out.append(
                    {
                        "proposal": p.hash_hex,
                        "action": p.action,
                        "target": p.target,
                        "title": p.title,
                        "proposer": p.proposer,
                        "status": p.status.value,
                        "yes": p.yes,
                        "no": p.no,
                        "total": p.total,
                        "lamport": p.lamport,
                        "deadline": p.deadline,
                        "votes": dict(p.votes),
                    }
                )
            return out

        @app.post(
            "/api/ledger/proposals",
            tags=["governance"],
            summary="Open a hearing (a proposal on this node's feed)",
            status_code=201,
            **mutating("hearing/opened"),
        )
        async def propose(body: ProposeRequest, _: Token) -> LedgerWrite:
            ledger = gw.ledger()
            e = gw._ledger_call(
                lambda: ledger.propose(body.action, body.target, body.title, body.proposer)
            )
            opened = HearingOpened(
                proposal=e.hash_hex,
                action=body.action,
                target=body.target,
                title=body.title,
                proposer=body.proposer,
            )
            return await gw.announce_entry(e, "hearing/opened", opened, body.proposer)

        @app.post(
            "/api/ledger/proposals/{proposal}/votes",
            tags=["governance"],
            summary="Vote on an open hearing for an actor",
            status_code=201,
            **mutating("hearing/vote"),
        )
        async def vote(
            proposal: Annotated[
                str, PathParam(pattern=r"^[0-9a-fA-F]{4,64}$", description="hash or prefix")
            ],
            body: VoteRequest,
            _: Token,
        ) -> LedgerWrite:
            ledger = gw.ledger()
            p = gw._ledger_call(lambda: ledger.find_proposal(proposal))
            e = gw._ledger_call(lambda: ledger.vote(p.hash_hex, body.actor, body.choice))
            voted = HearingVote(
                proposal=p.hash_hex, actor=body.actor, choice=body.choice, entry=e.hash_hex
            )
            return await gw.announce_entry(e, "hearing/vote", voted, body.actor)

        # -- mesh and story ---------------------------------------------------------------------
        @app.get("/api/mesh/peers", tags=["mesh"], summary="The mesh: this node and its peers")
        async def mesh_peers() -> dict[str, Any]:
            mesh: Any = getattr(gw.node, "mesh", None)
            if mesh is None or not hasattr(mesh, "status"):
                raise ApiError(
                    503, "the mesh part is not running on this node (no [mesh] in gibsey.toml)"
                )
            status: dict[str, Any] = mesh.status()
            return status

        @app.get("/api/story/pages", tags=["story"], summary="Pages of the story")
        async def story_pages(
            branch: Annotated[str | None, Query(max_length=128)] = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ) -> dict[str, Any]:
            story: Any = _story_of(gw.node)
            if story is None:
                raise ApiError(503, "the narrative engine (story) part is not running on this node")
            pages_of: Callable[..., Any] | None = getattr(story, "pages", None)
            if pages_of is None:
                raise ApiError(501, "story pages are served over GraphQL here: POST /graphql")
            found = pages_of(branch) if branch else pages_of()
            if inspect.isawaitable(found):
                found = await found
            items = list(found)[:limit]
            return {"branch": branch, "pages": [gw._plain(p) for p in items]}

    # -- pieces of the endpoints ----------------------------------------------------------------
    async def publish_with_id(
        self,
        kind: str,
        payload: Payload,
        actor: str,
        box: dict[str, str],
        correlation: str | None = None,
    ) -> tuple[Event, bool]:
        """Publish, recording the event's id in `box` before the broker can echo it back (so a
        subscriber's predicate sees it); `correlation` goes into the payload's field of that
        name, and into box["correlation"]."""
        if self.node.spine is None:
            raise ApiError(503, "the node's event spine is not running")
        if correlation is not None:
            payload = payload.model_copy(update={"correlation": correlation})
            box["correlation"] = correlation
        out, acked = self.node.send(kind, payload, actor)
        event = out.event
        box["id"] = event.id
        log.info(
            "published %s %s for %s",
            kind,
            event.id,
            actor,
            extra={"event_id": event.id, "kind": kind, "actor": actor},
        )
        try:
            await asyncio.wait_for(asyncio.shield(acked), ACK_TIMEOUT)
            return event, True
        except (TimeoutError, OverflowError):
            return event, False

    def _ledger_call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Overdraw as exc:
            raise ApiError(409, f"refused: {exc}") from exc
        except Rejected as exc:
            raise ApiError(422, f"refused ({exc.reason.value}): {exc.detail}") from exc
        except LedgerError as exc:
            raise ApiError(409, f"refused: {exc}") from exc
        except (ValueError, KeyError) as exc:
            raise ApiError(422, f"refused: {exc}") from exc

    @staticmethod
    def _plain(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if hasattr(item, "__dataclass_fields__"):
            import dataclasses

            return json.loads(json.dumps(dataclasses.asdict(item), default=str))
        if isinstance(item, dict):
            return json.loads(json.dumps(item, default=str))
        return str(item)

    async def _stream(
        self, request: Request, sub: Any, backlog: list[Event]
    ) -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            yield _sse("hello", {"node": self.node.node_id, "glyph": self.hub.glyph_view()})
            for event in backlog:
                yield _sse(event.kind, _event_json(event))
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), HEARTBEAT)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                if event is None:
                    yield _sse("bye", {"reason": "the node is stopping"})
                    return
                yield _sse(event.kind, _event_json(event))
        finally:
            self.hub.unsubscribe(sub)

    async def _answer(
        self, sub: Any, event: Event, correlation: str, acked: bool
    ) -> AsyncIterator[bytes]:
        try:
            yield _sse("request", {"event": event.id, "correlation": correlation, "acked": acked})
            text: list[str] = []
            timeout = ASK_FIRST_TOKEN_TIMEOUT
            while True:
                try:
                    got = await asyncio.wait_for(sub.queue.get(), timeout)
                except TimeoutError:
                    yield _sse(
                        "error",
                        {"error": f"the persona did not answer within {timeout:g}s"},
                    )
                    return
                if got is None:
                    yield _sse("error", {"error": "the node is stopping"})
                    return
                timeout = ASK_TOKEN_TIMEOUT
                p = got.payload
                piece = str(p.get("text", ""))
                if p.get("final"):
                    # The final agent/emit carries the whole answer (or nothing new).
                    whole = piece or "".join(text)
                    yield _sse("done", {"persona": p.get("persona"), "text": whole})
                    return
                text.append(piece)
                yield _sse("token", {"seq": p.get("seq"), "text": piece})
        finally:
            self.hub.unsubscribe(sub)

    # -- GraphQL of the narrative engine ---------------------------------------------------------
    def _mount_strawberry(self, app: FastAPI, module: Any) -> None:
        """The narrative engine's strawberry schema, as node/story/graphql.py documents it; every
        mutation publishes narrative/change through the node (resolvers run on the loop)."""
        from strawberry.asgi import GraphQL

        from gibsey.core.envelope import NarrativeChange

        node = self.node

        def publish(
            change: str, branch: str, page: str | None, version: str | None, actor: str
        ) -> None:
            payload = NarrativeChange(
                branch=branch,
                page=page,
                version=version,
                change=change,
            )
            event = node.emit("narrative/change", payload, actor=actor)
            log.info(
                "published narrative/change %s for %s",
                event.id,
                actor,
                extra={"event_id": event.id, "kind": "narrative/change", "actor": actor},
            )

        # strawberry's plain ASGI app: its context may be any object (the FastAPI router insists on
        # a dict or BaseContext, and the story's resolvers expect their StoryContext).
        class StoryGraphQL(GraphQL):
            async def get_context(self, request: Any, response: Any) -> Any:
                try:
                    return module.context_for(_story_of(node), publish)
                except Exception as exc:
                    raise ApiError(503, f"the narrative engine is not running: {exc}") from exc

        # A route, not a mount: /graphql itself answers (a mount would redirect to /graphql/).
        app.router.routes.append(
            Route("/graphql", StoryGraphQL(module.schema), methods=["GET", "POST"], name="graphql")
        )

    def _graphql(self, app: FastAPI) -> None:
        """Mount node/story/graphql.py at /graphql when it is built: it may provide
        `make_app(node)` / `asgi_app(node)` (an ASGI app), or a module-level `app`."""
        try:
            module = importlib.import_module("gibsey.node.story.graphql")
        except ModuleNotFoundError as exc:
            if exc.name not in ("gibsey.node.story", "gibsey.node.story.graphql"):
                raise
            self.graphql_problem = "the narrative engine's GraphQL schema is not built on this node"
        else:
            if hasattr(module, "schema") and hasattr(module, "context_for"):
                self._mount_strawberry(app, module)
                return
            sub_app: Any = None
            for factory in ("make_app", "asgi_app", "graphql_app"):
                fn = getattr(module, factory, None)
                if callable(fn):
                    sub_app = fn(self.node)
                    break
            if sub_app is None:
                sub_app = getattr(module, "app", None)
            if sub_app is not None:
                app.mount("/graphql", sub_app, name="graphql")
                return
            self.graphql_problem = "gibsey.node.story.graphql provides no ASGI app to mount"
        problem = self.graphql_problem

        async def no_graphql(request: Request) -> Response:
            return JSONResponse({"error": problem, "part": "story"}, status_code=404)

        app.add_api_route("/graphql", no_graphql, methods=["GET", "POST"], include_in_schema=False)


def _story_of(node: Node) -> Story | None:
    return node.parts.story


def mutating_operations(openapi: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(method, path, declared event kinds) of every operation that is not a read."""
    out = []
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if method.lower() in ("post", "put", "patch", "delete"):
                out.append((method.upper(), path, list(op.get(EVENTS_EXT, []))))
    return out


__all__ = ["ApiError", "GatewayApp", "mutating_operations"]
