"""Attach the ledger to a running node: its own feed, signed with the node's key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gibsey.ledger.ledger import Ledger

if TYPE_CHECKING:
    from gibsey.node.daemon import Node


def attach(node: Node) -> None:
    if node.ledger is None:
        node.ledger = Ledger.open(node.data_dir, node.identity.signing_key)
        node.add_closer(node.ledger.close)
