"""The gateway's endpoints, one router per OpenAPI tag (plus the page and /metrics)."""

from __future__ import annotations

from fastapi import APIRouter

# First: the routes below are declared without FastAPI importing pydantic.v1 (fastapi_lean.py).
from gibsey.node.gateway import fastapi_lean  # noqa: F401
from gibsey.node.gateway.routes import (
    agents,
    alerts,
    dashboard,
    events,
    glyph,
    governance,
    ledger,
    mesh,
    metrics,
    node,
    story,
)

# In the order of the OpenAPI document's paths.
ROUTERS: tuple[APIRouter, ...] = (
    dashboard.router,
    metrics.router,
    node.router,
    glyph.router,
    events.router,
    agents.router,
    ledger.router,
    governance.router,
    mesh.router,
    story.router,
    alerts.router,
)
