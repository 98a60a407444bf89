"""Ledger commands announce what they did on the node's spine (`gift/txn`, `gift/balance`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gibsey.core.announce import announce
from gibsey.core.envelope import GiftBalance, GiftTxn
from gibsey.ledger.entry import Entry

MAX_LISTED = 500


def _txn(payload: dict[str, Any]) -> GiftTxn:
    body = payload["body"]
    kind = payload["type"]
    if kind == "gift":
        return GiftTxn(
            type="gift",
            giver=body["from"],
            receiver=body["to"],
            amount=body["amount"],
            entry=payload["entry"][:256],
        )
    if kind == "mint":
        return GiftTxn(
            type="mint", receiver=body["actor"], amount=body["amount"], entry=payload["entry"][:256]
        )
    return GiftTxn(
        type="burn",
        giver=body["actor"],
        receiver="",
        amount=body["amount"],
        entry=payload["entry"][:256],
    )


def txn_of(e: Entry) -> GiftTxn:
    """The gift/txn that announces entry `e` (a gift, mint or burn), as `gibsey ledger` does."""
    return _txn({"type": e.type, "body": e.body, "entry": e.hash_hex})


def announce_ledger_event(data_dir: Path, event: str, payload: dict[str, Any]) -> str | None:
    if event == "gift/txn":
        txn = _txn(payload)
        return announce(
            data_dir, event, txn, actor=txn.giver or txn.receiver, lamport=int(payload["lamport"])
        )
    balances: dict[str, int] = payload["balances"]
    top = dict(sorted(balances.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_LISTED])
    summary = GiftBalance(
        balances=top, supply=payload["supply"], truncated=len(balances) > MAX_LISTED
    )
    return announce(data_dir, "gift/balance", summary, actor="node", lamport=0)
