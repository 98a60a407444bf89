"""The agents as a part of the daemon (listed in gibsey.node.parts.PARTS): personas on the
supervised llama.cpp worker, memory, facts, the Agency Tensor and the safety inverter, whose
rotation gate the ritual pipeline asks before every program runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gibsey.node.agents.service import AgentService

if TYPE_CHECKING:
    from gibsey.node.daemon import Node


def attach(node: Node) -> AgentService:
    service = AgentService(node)
    service.attach()
    return service
