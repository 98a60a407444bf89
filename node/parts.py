"""The parts that attach to a running node, in start order.

Each module named here provides `attach(node: Node) -> None`, which registers router handlers
(`node.router.register(...)` / `register_inline(...)`) and long-running services
(`node.add_service(name, factory)`). A part that is not built on this checkout is skipped. This
is the declarative process list of the daemon: what runs is read here, not scattered in code.
"""

from __future__ import annotations

PARTS: tuple[str, ...] = (
    "gibsey.ledger.part",  # the node's own feed and the view of every feed it holds
    "gibsey.mesh.part",  # ledger gossip with the gallery's peers (when gibsey.toml has [mesh])
    "gibsey.node.runtime",  # glyph rotation -> opcode table -> Zig VM -> effects
    "gibsey.node.story.part",  # narrative engine: story graph from the ledger, merge hearings
    "gibsey.node.dial_bridge",  # the glyph dial: USB serial / MQTT frames -> glyph/rotated
    "gibsey.node.agents.part",  # personas (llama.cpp worker), memory, facts, tensor, safety
    "gibsey.node.gateway.part",  # HTTP gateway, dashboard, /metrics (when [gateway] listen is set)
)
