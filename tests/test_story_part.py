"""The narrative engine attached to a running node: a glyph's PROPOSE opens a branch, and a
passed merge hearing is applied and announced once by the node's own service."""

from __future__ import annotations

import asyncio

from gibsey.node.story.corpus import SAMPLE, read_corpus
from tests.conftest import Collector, CollectorFactory, RunningNode
from tests.events import raw_event, topic


async def test_glyph_propose_branches_and_passed_merge_is_announced(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    node = running_node.node
    nid = running_node.node_id
    story = node.parts.story
    assert story is not None
    await asyncio.to_thread(story.import_corpus, read_corpus(SAMPLE), "main", "an-author")
    col = await collector_factory(running_node.port, f"gibsey/v1/{nid}/narrative/change")
    await col.publish(
        topic(nid, "glyph/rotated"),
        raw_event(nid, "glyph/rotated", {"symbol": 1, "rotation": 3}, actor="visitor-1"),
    )

    def branched(c: Collector) -> bool:
        return any(
            e["payload"]["change"] == "branch" and e["payload"]["branch"] == "dream-london-fox"
            for e in c.of_kind("narrative/change")
        )

    await col.wait_for(branched)
    b = story.graph.branch("dream-london-fox")
    assert b is not None and b.created_by == "visitor-1" and b.base == "main"

    def rite() -> str:
        text = story.page("main", "004")[1].text
        story.write("dream-london-fox", "004", text.replace("twice", "in a dream"), "london-fox")
        assert node.parts.ledger is not None
        node.parts.ledger.mint("london-fox", 100, "dream")
        p = story.propose("dream-london-fox", "london-fox")
        node.parts.ledger.vote(p.entry.hash_hex, "london-fox", "yes")
        return p.commit

    commit = await asyncio.to_thread(rite)

    def merged(c: Collector) -> list[dict[str, object]]:
        return [e for e in c.of_kind("narrative/change") if e["payload"]["change"] == "merge"]

    [event] = await col.wait_for(merged)
    assert event["payload"] == {
        "branch": "main",
        "page": None,
        "version": commit,
        "change": "merge",
    }
    assert "in a dream" in story.page("main", "004")[1].text
    await asyncio.sleep(1.5)  # another service round: nothing runs twice
    assert len(merged(col)) == 1
