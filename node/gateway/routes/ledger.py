"""The ledger: balances and entries in this node's view, and gifts between actors."""

from __future__ import annotations

import asyncio
import collections
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query

from gibsey.core.envelope import GiftTxn
from gibsey.ledger.economy import EntryEffect
from gibsey.ledger.entry import Entry
from gibsey.node.gateway.auth import Token
from gibsey.node.gateway.errors import ledger_refusals
from gibsey.node.gateway.idempotency import MAX_KEY, digest
from gibsey.node.gateway.models import GiftRequest, LedgerWrite
from gibsey.node.gateway.openapi import PART_MAY_BE_MISSING, mutating
from gibsey.node.gateway.responses import READ, BalancesAnswer, EntriesAnswer
from gibsey.node.gateway.state import State

router = APIRouter(tags=["ledger"])


@router.get(
    "/api/ledger/balances",
    summary="Balances in this node's view",
    responses=PART_MAY_BE_MISSING,
    response_model=BalancesAnswer,
    **READ,
)
async def balances(gw: State) -> dict[str, Any]:
    econ = gw.ledger().view().economy
    ordered = dict(sorted(econ.balances.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "balances": ordered,
        "minted": econ.minted,
        "burned": econ.burned,
        "supply": econ.supply,
    }


def _entry_json(e: Entry, ours: bool, eff: EntryEffect | None) -> dict[str, Any]:
    return {
        "hash": e.hash_hex,
        "author": e.author_hex,
        "ours": ours,
        "seq": e.seq,
        "lamport": e.lamport,
        "type": e.type,
        "body": e.body,
        "applied": None if eff is None else eff.applied,
        "note": "" if eff is None else eff.note,
    }


@router.get(
    "/api/ledger/entries",
    summary="Ledger entries, in fold order",
    responses=PART_MAY_BE_MISSING,
    response_model=EntriesAnswer,
    **READ,
)
async def entries(
    gw: State,
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
        last.append(_entry_json(e, e.author == ledger.author, view.effect(e)))
    return {"total": total, "entries": list(last)}


@router.post(
    "/api/ledger/gift",
    summary="Gift tokens from one actor to another (must be covered)",
    status_code=201,
    **mutating("gift/txn", stores=True),
)
async def gift(
    body: GiftRequest,
    _: Token,
    gw: State,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=MAX_KEY,
            description="a string the client makes per gift: a retry with it (after a timeout) "
            "gets the first answer again, and nothing is given twice (node/gateway/idempotency.py)",
        ),
    ] = None,
) -> LedgerWrite:
    ledger = gw.ledger()

    async def give() -> LedgerWrite:
        with ledger_refusals():
            # In a thread: the append waits for its commit (an fsync on an SD card), and this
            # loop is the node's, its dial's turns included.
            e = await asyncio.to_thread(
                ledger.gift, body.giver, body.receiver, body.amount, body.memo
            )
        txn = GiftTxn(
            type="gift",
            giver=body.giver,
            receiver=body.receiver,
            amount=body.amount,
            entry=e.hash_hex[:64],
        )
        return await gw.announce_entry(e, "gift/txn", txn, body.giver)

    request = digest(body.giver, body.receiver, body.amount, body.memo)
    return await gw.gifts.once(idempotency_key, request, give)
