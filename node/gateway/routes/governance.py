"""Governance: Schrödinger hearings (proposals on the ledger) and the votes on them."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from gibsey.core.envelope import HearingOpened, HearingVote
from gibsey.ledger.governance import Proposal
from gibsey.node.gateway.auth import Token
from gibsey.node.gateway.errors import ledger_refusals
from gibsey.node.gateway.models import LedgerWrite, ProposeRequest, VoteRequest
from gibsey.node.gateway.openapi import PART_MAY_BE_MISSING, mutating
from gibsey.node.gateway.responses import READ, ProposalInfo
from gibsey.node.gateway.state import State

router = APIRouter(tags=["governance"])


def _proposal_json(p: Proposal) -> dict[str, Any]:
    return {
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


@router.get(
    "/api/ledger/proposals",
    summary="Schrödinger hearings",
    responses=PART_MAY_BE_MISSING,
    response_model=list[ProposalInfo],
    **READ,
)
async def proposals(
    gw: State,
    all: Annotated[bool, Query(description="include expired/failed/void")] = False,
) -> list[dict[str, Any]]:
    gov = gw.ledger().view().governance
    return [
        _proposal_json(p)
        for p in sorted(gov.proposals.values(), key=lambda p: p.lamport)
        if all or p.status.value in ("open", "passed")
    ]


@router.post(
    "/api/ledger/proposals",
    summary="Open a hearing (a proposal on this node's feed)",
    status_code=201,
    **mutating("hearing/opened", stores=True),
)
async def propose(body: ProposeRequest, _: Token, gw: State) -> LedgerWrite:
    ledger = gw.ledger()
    with ledger_refusals():  # in a thread: an append waits for its commit (ledger.py's gift)
        e = await asyncio.to_thread(
            ledger.propose, body.action, body.target, body.title, body.proposer
        )
    opened = HearingOpened(
        proposal=e.hash_hex,
        action=body.action,
        target=body.target,
        title=body.title,
        proposer=body.proposer,
    )
    return await gw.announce_entry(e, "hearing/opened", opened, body.proposer)


@router.post(
    "/api/ledger/proposals/{proposal}/votes",
    summary="Vote on an open hearing for an actor",
    status_code=201,
    **mutating("hearing/vote", stores=True),
)
async def vote(
    proposal: Annotated[
        str, PathParam(pattern=r"^[0-9a-fA-F]{4,64}$", description="hash or prefix")
    ],
    body: VoteRequest,
    _: Token,
    gw: State,
) -> LedgerWrite:
    ledger = gw.ledger()
    with ledger_refusals():
        p = ledger.find_proposal(proposal)
        e = await asyncio.to_thread(ledger.vote, p.hash_hex, body.actor, body.choice)
    voted = HearingVote(proposal=p.hash_hex, actor=body.actor, choice=body.choice, entry=e.hash_hex)
    return await gw.announce_entry(e, "hearing/vote", voted, body.actor)
