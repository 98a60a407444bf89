"""The gateway's errors: every failure is a JSON object whose `error` field says what was wrong.

`ApiError` is what an endpoint raises to answer with a status of its choosing; `install` makes
the app answer validation errors, unknown paths and methods the same way, a write the node's disk
refused (full, failing, read-only) with 507 Insufficient Storage, and a failure inside the node
with a bare 500 (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gibsey.core.storage import StorageError
from gibsey.ledger.errors import LedgerError, Overdraw, Rejected

log = logging.getLogger("gibsey.gateway")


class ApiError(Exception):
    def __init__(self, status: int, error: str, **extra: object) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.extra = extra


@contextmanager
def ledger_refusals() -> Iterator[None]:
    """Answer a change the ledger refuses with 409 (it conflicts with the ledger's state) or 422
    (the change itself is invalid), saying why."""
    try:
        yield
    except Overdraw as exc:
        raise ApiError(409, f"refused: {exc}") from exc
    except Rejected as exc:
        raise ApiError(422, f"refused ({exc.reason.value}): {exc.detail}") from exc
    except LedgerError as exc:
        raise ApiError(409, f"refused: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise ApiError(422, f"refused: {exc}") from exc


def _field_path(loc: Sequence[object]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _describe(errors: Sequence[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', '')})")
        elif e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",):
            parts.append("a JSON body is required")
        else:
            parts.append(f"{_field_path(e.get('loc', ()))}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.error, **exc.extra}, status_code=exc.status, headers=headers)


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    detail = [
        {
            "field": "body" if e.get("type") == "json_invalid" else _field_path(e.get("loc", ())),
            "problem": str(e.get("msg", "")),
        }
        for e in errors[:20]
    ]
    return JSONResponse(
        {"error": f"invalid request: {_describe(errors)}", "detail": detail}, status_code=status
    )


def _too_many_digits(exc: Exception) -> bool:
    """FastAPI's 400 for a body json.loads could not read because an integer in it has more
    digits than Python converts (4,300: a ValueError, not a JSONDecodeError)."""
    cause = exc.__cause__
    return isinstance(cause, ValueError) and "integer string conversion" in str(cause)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if _too_many_digits(exc):
        return JSONResponse(
            {"error": "invalid request: a number in the body has too many digits"},
            status_code=422,
        )
    message = {
        404: f"no such endpoint: {request.method} {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def _disk_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageError)
    # Said once by the node (safety/alert disk_full); each request only gets its answer.
    log.debug("gateway: %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {
            "error": f"the node's disk refused the write ({exc.strerror}): nothing was stored; "
            "reads go on, and writes work again by themselves once the disk takes them",
            "errno": exc.errno_name,
        },
        status_code=507,
    )


async def _crashed(request: Request, exc: Exception) -> Response:
    log.exception("gateway: %s %s failed", request.method, request.url.path)
    return JSONResponse(
        {"error": "internal error in the node (logged); nothing more is said here"},
        status_code=500,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StorageError, _disk_refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crashed)
