"""`attach(node)`: the agents part of the daemon (listed in gibsey.node.parts.PARTS)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from gibsey.node.agents.service import AgentService

if TYPE_CHECKING:
    from gibsey.node.daemon import Node

_SERVICES: weakref.WeakKeyDictionary[Node, AgentService] = weakref.WeakKeyDictionary()


def attach(node: Node) -> None:
    service = AgentService(node)
    service.attach()
    _SERVICES[node] = service


def service_of(node: Node) -> AgentService | None:
    return _SERVICES.get(node)
