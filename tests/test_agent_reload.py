"""Hot swap of the model: a new model loads beside the old one; a failed load changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

from gibsey.node.agents.model import default_model_path
from gibsey.node.daemon import Node
from tests.agent_support import agent_node, agents, ask
from tests.conftest import Collector, CollectorFactory
from tests.events import signed_event, topic


async def _reload(
    collector_factory: CollectorFactory, node: Node, port: int, path: str
) -> tuple[dict[str, Any], Collector]:
    reply = f"gibsey/reply/{uuid.uuid4().hex[:8]}"
    col = await collector_factory(port, reply, f"gibsey/v1/{node.node_id}/safety/alert")
    corr = uuid.uuid4().hex[:8]
    await col.publish(
        topic(node.node_id, "agent/reload"),
        signed_event(
            node.node_id,
            "agent/reload",
            {"path": path, "reply_to": reply, "correlation": corr},
            node.identity.signing_key,  # the node's own key is an operator's
            lamport=node.clock.value + 1,  # past every change it accepted
        ),
    )

    def outcome(c: Collector) -> dict[str, Any] | None:
        for t, p in c.messages:
            if t == reply:
                doc = json.loads(p)
                if doc["kind"] == "agent/reloaded" and doc["payload"]["correlation"] == corr:
                    return dict(doc["payload"])
        return None

    result = await col.wait_for(outcome, timeout_s=60)
    return result, col


async def test_reload_to_a_missing_file_keeps_the_old_model_answering(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    async with agent_node(tmp_path, preload=True) as (node, broker):
        service = agents(node)
        first, _, _ = await ask(collector_factory, node, broker.port, "the-author", "Hello.")
        assert first["text"].strip()
        sup = service.supervisor
        assert sup is not None
        old_model, old_pid = sup.model, sup.pid
        missing = tmp_path / "no-such-model.gguf"
        result, col = await _reload(collector_factory, node, broker.port, str(missing))
        assert result["ok"] is False
        assert "no model file" in result["error"]
        assert result["path"] == str(old_model)
        await col.wait_for(
            lambda c: any(
                a["payload"]["reason"] == "model_load_failed" for a in c.of_kind("safety/alert")
            )
        )
        assert sup.model == old_model and sup.pid == old_pid
        final, toks, _ = await ask(
            collector_factory, node, broker.port, "the-author", "How does it end?"
        )
        assert final["text"].strip() and toks


async def test_reload_of_a_corrupt_model_keeps_the_old_one(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    async with agent_node(tmp_path, preload=True) as (node, broker):
        await asyncio.wait_for(agents(node).ready.wait(), 60)  # the preload has started it
        sup = agents(node).supervisor
        result, _ = await _reload(collector_factory, node, broker.port, str(bad))
        assert result["ok"] is False
        assert sup is not None and sup.model != bad
        final, _, _ = await ask(collector_factory, node, broker.port, "london-fox", "Still there?")
        assert final["text"].strip()


async def test_reload_to_another_model_file_swaps(
    tmp_path: Path, collector_factory: CollectorFactory
) -> None:
    other = tmp_path / "models" / "copy.gguf"
    other.parent.mkdir()
    os.symlink(default_model_path(), other)
    async with agent_node(tmp_path, preload=True) as (node, broker):
        service = agents(node)
        await ask(collector_factory, node, broker.port, "london-fox", "Hi.")
        sup = service.supervisor
        assert sup is not None
        old_pid = sup.pid
        result, _ = await _reload(collector_factory, node, broker.port, str(other))
        assert result["ok"] is True and result["path"] == str(other)
        assert sup.model == other and sup.pid != old_pid
        final, _, _ = await ask(collector_factory, node, broker.port, "london-fox", "New voice?")
        assert final["text"].strip()
