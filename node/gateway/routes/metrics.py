"""/metrics: the node's Prometheus metrics (read from the parts' counters at scrape time)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gibsey.node.gateway.state import State

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: State) -> Response:
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)
