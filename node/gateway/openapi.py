"""What the gateway's OpenAPI document says of an operation that changes something: the events
it publishes (`x-gibsey-events`), that it needs the write token, and how it refuses; and the
parts FastAPI cannot see: the token's security schemes, and /graphql (a plain ASGI route)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gibsey.node.gateway.middleware import MAX_BODY_BYTES
from gibsey.node.story.limits import MAX_ALIASES, MAX_DEPTH, MAX_QUERY_TOKENS

if TYPE_CHECKING:
    from fastapi import FastAPI

EVENTS_EXT = "x-gibsey-events"

SECURITY_SCHEMES: dict[str, Any] = {
    "token": {
        "type": "http",
        "scheme": "bearer",
        "description": "the node's write token (`gibsey gateway token` prints it)",
    },
    "tokenHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Gibsey-Token",
        "description": "the same write token, in a header of its own",
    },
}
# Either scheme will do (a list of requirements is an "or").
WRITE_SECURITY: list[dict[str, list[str]]] = [{"token": []}, {"tokenHeader": []}]

_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong write token; nothing changed, the body unread"},
    413: {"description": f"the body is larger than {MAX_BODY_BYTES:,} bytes; nothing changed"},
}


# A read of a part that may not run on this node (state.py: ledger(), mesh(), story()).
PART_MAY_BE_MISSING: dict[int | str, dict[str, Any]] = {
    503: {"description": "that part does not run on this node; the error says which"}
}


def publishes(*kinds: str) -> dict[str, Any]:
    """The `openapi_extra` of an operation that publishes `kinds` and needs the write token."""
    return {EVENTS_EXT: list(kinds), "security": WRITE_SECURITY}


# What an operation that stores on the node's disk before it answers may also say (errors.py).
_DISK_REFUSED: dict[int | str, dict[str, Any]] = {
    507: {
        "description": "the node's disk refused the write (full, failing, read-only): nothing "
        "was stored; reads go on, and writes work again by themselves once the disk takes them"
    },
}


def mutating(*kinds: str, stores: bool = False, throttled: bool = False) -> dict[str, Any]:
    """Route arguments of an operation that changes something and publishes `kinds`; `stores`:
    it writes to the node's disk before it answers (so it may answer 507); `throttled`: the node
    may refuse it over a flood bound (429)."""
    refused = {
        429: {"description": "the node refused it: over a flood bound; the error says which"}
    }
    return {
        "openapi_extra": publishes(*kinds),
        "responses": {
            **_REFUSALS,
            422: {"description": "the request is invalid; the error says why"},
            **(_DISK_REFUSED if stores else {}),
            **(refused if throttled else {}),
        },
    }


def mutating_operations(openapi: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(method, path, declared event kinds) of every operation that is not a read."""
    out = []
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if method.lower() in ("post", "put", "patch", "delete"):
                out.append((method.upper(), path, list(op.get(EVENTS_EXT, []))))
    return out


_GRAPHQL_LIMITS = (
    f"One operation: at most {MAX_QUERY_TOKENS:,} tokens, depth {MAX_DEPTH}, {MAX_ALIASES} "
    "aliases, and a bounded answer (an error says which limit)."
)
GRAPHQL_PATH: dict[str, Any] = {
    "post": {
        "tags": ["story"],
        "summary": "GraphQL: the story graph (queries are open; mutations need the write token)",
        "description": "createBranch, writePage and proposeMerge publish narrative/change. "
        "A mutation without the token is answered 401 with one GraphQL error; nothing runs. "
        + _GRAPHQL_LIMITS,
        "operationId": "graphql",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["query"],
                        "properties": {
                            "query": {"type": "string"},
                            "variables": {"type": "object"},
                            "operationName": {"type": "string"},
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "a GraphQL answer: `data`, and `errors` saying what failed"},
            **{str(status): r for status, r in _REFUSALS.items()},
        },
        # {}: a query needs nothing; a mutation needs one of the token's schemes.
        "security": [{}, *WRITE_SECURITY],
        EVENTS_EXT: ["narrative/change"],
    },
    "get": {
        "tags": ["story"],
        "summary": "GraphQL query in the URL (`?query=...`); no mutations",
        "operationId": "graphql_get",
        "parameters": [
            {"name": "query", "in": "query", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {"200": {"description": "a GraphQL answer"}},
    },
}


# What the gateway answers a request it cannot take (errors.py), whatever FastAPI would: its
# default 422 schema (HTTPValidationError: loc, msg, type) is not what a client gets.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was wrong, in one line"},
        "detail": {
            "type": "array",
            "description": "for an invalid request: each field refused, and why",
            "items": {
                "type": "object",
                "required": ["field", "problem"],
                "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
            },
        },
    },
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def document_security(app: FastAPI) -> None:
    """Add the token's security schemes, /graphql and the gateway's one error body to the app's
    OpenAPI document; every operation that needs the token says it may answer 401 and 413."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()  # FastAPI's, which it caches in app.openapi_schema
            components = doc.setdefault("components", {})
            components["securitySchemes"] = SECURITY_SCHEMES
            schemas = components.setdefault("schemas", {})
            for item in doc["paths"].values():
                for op in item.values():
                    _document_errors(op)
            schemas["Error"] = ERROR_SCHEMA
            for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's, replaced
                schemas.pop(unused, None)
            doc["paths"]["/graphql"] = GRAPHQL_PATH  # GraphQL says its errors its own way
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(op: dict[str, Any]) -> None:
    """An operation's error answers as the gateway gives them (an outside tester's client,
    built from the document, expected FastAPI's 422 body, and no 401 from /api/agent/ask)."""
    responses = op.setdefault("responses", {})
    if op.get("security") and op["security"] != [{}, *WRITE_SECURITY]:
        for status, refusal in _REFUSALS.items():
            responses.setdefault(str(status), dict(refusal))
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            response["content"] = _ERROR_CONTENT
