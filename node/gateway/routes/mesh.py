"""The mesh: this node and the peers it gossips the ledger's feeds with."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gibsey.node.gateway.openapi import PART_MAY_BE_MISSING
from gibsey.node.gateway.responses import READ, MeshAnswer
from gibsey.node.gateway.state import State

router = APIRouter(tags=["mesh"])


@router.get(
    "/api/mesh/peers",
    summary="The mesh: this node and its peers",
    responses=PART_MAY_BE_MISSING,
    response_model=MeshAnswer,
    **READ,
)
async def mesh_peers(gw: State) -> dict[str, Any]:
    return gw.mesh().status()
