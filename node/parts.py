"""The parts that attach to a running node, in start order.

Each module named here provides `attach(node: Node) -> None`, which registers router handlers
(`node.router.register(...)` / `register_inline(...)`) and long-running services
(`node.add_service(name, factory)`). A part that is not built on this checkout is skipped. This
is the declarative process list of the daemon: what runs is read here, not scattered in code.
"""

from __future__ import annotations

PARTS: tuple[str, ...] = (
    "gibsey.ledger.part",  # the node's own feed and the view of every feed it holds
    "gibsey.node.runtime",  # glyph rotation -> opcode table -> Zig VM -> effects
)
