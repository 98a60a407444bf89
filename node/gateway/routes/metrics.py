"""/metrics: the node's Prometheus metrics (read from the parts' counters at scrape time), and
the gallery's scrape targets as Prometheus's HTTP service discovery reads them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from gibsey.node.gateway.responses import READ, TargetGroup
from gibsey.node.gateway.state import State
from gibsey.node.gateway.targets import GALLERY_LABEL_CHARS, TARGETS_PATH, http_sd, membership

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(gw: State) -> Response:
    body, content_type = gw.metrics.render()
    return Response(body, media_type=content_type)


@router.get(
    TARGETS_PATH,
    tags=["node"],
    summary="The gallery's scrape targets (Prometheus http_sd): this node and its mesh peers",
    response_model=list[TargetGroup],
    **READ,
)
async def scrape_targets(
    gw: State,
    gallery: Annotated[str, Query(min_length=1, max_length=GALLERY_LABEL_CHARS)] = "gallery",
) -> list[dict[str, Any]]:
    """Read at every request, so the list follows the mesh: a peer met since Prometheus started
    is scraped at its next refresh (the prometheus.yml of `gibsey monitor` points here)."""
    node = gw.node
    mesh = node.config.mesh
    peers = [(p.key.hex(), p.endpoint) for p in mesh.peers] if mesh else []
    return http_sd(membership(node.data_dir, node.config.gateway.listen, peers), gallery)
