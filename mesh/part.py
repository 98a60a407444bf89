"""The mesh as a part of the daemon: `gibsey up` runs it when gibsey.toml has a `[mesh]` section.

The node does not own a ledger yet, so the part opens one from the data directory (with the
node's own key) and exposes it as `node.ledger` for the other parts, unless one is already
there. Peer state changes go on the spine as `mesh/peer` events.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from gibsey.ledger.store import Store

from .config import MeshConfig
from .node import MeshNode

log = logging.getLogger("gibsey.mesh")


def attach(node: Any) -> None:
    section = node.config.extra.get("mesh")
    if not isinstance(section, dict):
        log.debug("mesh: no [mesh] section in the configuration; not running")
        return
    section = {k: v for k, v in section.items() if k != "bridge"}
    cfg = MeshConfig.from_dict(section)
    if not cfg.enabled:
        return
    ledger = getattr(node, "ledger", None)
    if ledger is None:
        from gibsey.ledger.ledger import Ledger

        ledger = Ledger.open(node.data_dir, key=node.identity.signing_key)
        node.ledger = ledger
    store = cast(Store, ledger.store)

    def emit(kind: str, payload: dict[str, Any]) -> None:
        from gibsey.node.envelope import MeshPeer

        node.emit(kind, MeshPeer(**payload))

    mesh = MeshNode(store, node.identity.signing_key, cfg, data_dir=node.data_dir, emit=emit)
    node.mesh = mesh
    node.add_service("mesh", mesh.run)
