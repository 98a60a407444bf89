"""The glyph runtime as a part of the daemon (listed in gibsey.node.parts.PARTS).

The runtime answers `vm/load` (an operator binding a program over MQTT), appends the programs'
mints and gifts to the ledger on its own service, and gives its `perform` to the ritual pipeline
(gibsey.node.parts.attach_rituals), which runs it for every glyph/rotated that passes the gates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gibsey.node.glyph.runtime import Runtime

if TYPE_CHECKING:
    from gibsey.node.daemon import Node


def attach(node: Node) -> Runtime:
    runtime = Runtime(node)
    node.router.register("vm-load", ["vm/load"], runtime.on_vm_load)
    node.add_service("ledger-effects", runtime.ledger_service)
    node.add_drainer(runtime.ledger_queue.join)
    node.add_closer(runtime.table.close)
    return runtime
