"""The narrative engine attached to a running node: a glyph's PROPOSE opens a branch, and a
passed merge hearing is applied and announced once by the node's own service."""

from __future__ import annotations

import asyncio

from gibsey.harness.waiting import until
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


async def test_a_node_without_canon_says_so_once_not_at_every_dream(
    running_node: RunningNode, collector_factory: CollectorFactory
) -> None:
    """Tried: three visitors dream on a fresh node (no `gibsey story import`), then a fourth
    turn. Must hold: the three are counted, and said in one story_refused alert (the first,
    naming the count and the fix); not one alert a turn, which would fill the dashboards and
    spend the alert budget that the node's other alerts share."""
    node = running_node.node
    nid = running_node.node_id
    story = node.parts.story
    assert story is not None
    col = await collector_factory(
        running_node.port, topic(nid, "safety/alert"), topic(nid, "ritual/performed")
    )
    for i in range(3):
        dream = {"symbol": 1, "rotation": 3}
        await col.publish(
            topic(nid, "glyph/rotated"),
            raw_event(nid, "glyph/rotated", dream, actor=f"visitor-{i}"),
        )
    await until(lambda: story.proposals_without_canon == 3, 10, "three Dream turns refused")
    # A last turn's answer: the node's alerts before it have reached the broker before it.
    marker = raw_event(nid, "glyph/rotated", {"symbol": 1, "rotation": 0}, actor="visitor-9")
    await col.publish(topic(nid, "glyph/rotated"), marker)
    await col.wait_for(
        lambda c: any(e["actor"] == "visitor-9" for e in c.of_kind("ritual/performed"))
    )
    refused = [e["payload"] for e in col.of_kind("safety/alert")]
    refused = [p for p in refused if p["reason"] == "story_refused"]
    assert len(refused) == 1
    assert refused[0]["detail"].startswith("1 turn(s) proposing a branch in the last ")
    assert "(1 since the start; last: " in refused[0]["detail"]
    assert "wanted dream-london-fox): `gibsey story import`" in refused[0]["detail"]
