"""Attach the narrative engine to a running node.

- A `narrative/change` with change="propose" and no version is what the Zig VM emits when a
  glyph's program PROPOSEs a branch (e.g. "remember-london-fox"): the part creates that branch
  from canon if it does not exist yet (a ledger entry, so it replicates) and announces
  change="branch". Proposals made with `gibsey story propose` carry the merge commit as their
  version and are only observed here.
- A service keeps the story graph in step with the ledger (entries from the CLI and the mesh
  included) and runs this node's narrative-merge executor for hearings that passed, which
  announces change="merge" once per hearing on this node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gibsey.core.storage import StorageError
from gibsey.ledger.bodies import ACTOR_RE

from .engine import Story
from .model import CANON, StoryError, check_branch

if TYPE_CHECKING:
    from collections.abc import Callable

    from gibsey.core.envelope import Event, Payload
    from gibsey.ledger.governance import Execution
    from gibsey.node.daemon import Node

    # (change, branch, page, version, actor): announce a narrative/change.
    _Announce = Callable[[str, str, str | None, str | None, str], None]

log = logging.getLogger("gibsey.story")
SYNC_INTERVAL_S = 1.0


def attach(node: Node) -> Story | None:
    from gibsey.core.envelope import NarrativeChange, SafetyAlert

    ledger = node.parts.ledger
    if ledger is None:
        log.info("no ledger on this node: the narrative engine is not attached")
        return None
    story = Story(ledger, node.data_dir)

    def publish(
        change: str, branch: str, page: str | None, version: str | None, actor: str
    ) -> None:
        node.emit(
            "narrative/change",
            NarrativeChange(branch=branch, page=page, version=version, change=change),
            actor=actor if ACTOR_RE.match(actor) else "node",
        )

    async def on_change(event: Event, payload: Payload) -> None:
        assert isinstance(payload, NarrativeChange)
        if payload.change != "propose" or payload.version is not None:
            return
        actor = event.actor if ACTOR_RE.match(event.actor) else "node"
        try:
            name = check_branch(payload.branch)
            await asyncio.to_thread(story.sync)
            if story.graph.branch(name) is not None:
                return  # already there: a later PROPOSE of the same glyph adds nothing
            if story.graph.branch(CANON) is None:
                raise StoryError(f"no {CANON} yet (gibsey story import): cannot branch {name}")
            change = await asyncio.to_thread(story.create_branch, name, CANON, actor)
        except StoryError as exc:
            node.alert(SafetyAlert(reason="story_refused", detail=f"{event.id}: {exc}"))
            return
        except StorageError as exc:  # not stored; the node said so once (its DiskHealth)
            log.warning("branch not made for %s: the disk refuses writes: %s", event.id, exc)
            return
        publish("branch", name, None, change.commit, actor)

    async def service() -> None:
        while True:
            try:
                await asyncio.to_thread(story.sync)
                done = await asyncio.to_thread(story.run_executors, None)
                _report_merges(node, story, done, publish)
            except StorageError:
                # Reported to the node's DiskHealth, which says it once per episode (not once a
                # second); the view catches up by itself once the disk takes writes again.
                pass
            except Exception as exc:  # keep serving; a bad fold is reported, not fatal
                log.exception("story sync failed")
                node.alert(SafetyAlert(reason="story_sync_failed", detail=repr(exc)[:1000]))
            await asyncio.sleep(SYNC_INTERVAL_S)

    node.router.register("story", ["narrative/change"], on_change)
    node.add_service("story-sync", service)
    node.add_closer(story.close)
    return story


def _report_merges(node: Node, story: Story, done: list[Execution], publish: _Announce) -> None:
    """Announce each merge this node applied for a passed hearing; alert on each it could not."""
    from gibsey.core.envelope import SafetyAlert

    for x in done:
        h = story.graph.hearing(x.proposal)
        if x.status == "executed" and h is not None and h.branch:
            publish("merge", h.branch, None, h.target, h.proposer)
        elif x.status != "executed":
            node.alert(SafetyAlert(reason="merge_not_applied", detail=f"{x.proposal}: {x.detail}"))
