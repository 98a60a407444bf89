"""Attach the narrative engine to a running node.

- A `narrative/change` with change="propose" and no version is what the Zig VM emits when a
  glyph's program PROPOSEs a branch (e.g. "remember-london-fox"): the part creates that branch
  from canon if it does not exist yet (a ledger entry, so it replicates) and announces
  change="branch". Proposals made with `gibsey story propose` carry the merge commit as their
  version and are only observed here.
- A service keeps the story graph in step with the ledger (entries from the CLI and the mesh
  included) and runs this node's narrative-merge executor for hearings that passed, which
  announces change="merge" once per hearing on this node.
- A node with no canon yet (a fresh one: no `gibsey story import`) cannot branch a turn's
  proposal (Remember's and Dream's default programs propose): said as `story_refused` at the
  first, then at most once per NO_CANON_ALERT_S with the count (DropAlerts), not once a turn:
  visitors turning such a node would otherwise fill the dashboards, and the router's alert
  budget that the node's other alerts share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from gibsey.core.actors import ACTOR_RE
from gibsey.core.storage import StorageError
from gibsey.node.spine.drops import DropAlerts

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
STORY_REFUSED = "story_refused"  # the reason of the safety/alert
CANON_REPLACED = "story_canon_replaced"  # another node's main came first (graph.py)
NO_CANON_ALERT_S = 60.0  # a node without canon says so at most this often, with the count


def attach(node: Node) -> Story | None:
    from gibsey.core.envelope import NarrativeChange, SafetyAlert

    ledger = node.parts.ledger
    if ledger is None:
        log.info("no ledger on this node: the narrative engine is not attached")
        return None
    story = Story(ledger, node.data_dir)
    say_no_canon = _NoCanonNotice(node, story)

    def publish(
        change: str, branch: str, page: str | None, version: str | None, actor: str
    ) -> None:
        node.emit(
            "narrative/change",
            NarrativeChange.model_validate(
                {"branch": branch, "page": page, "version": version, "change": change}
            ),
            actor=actor if ACTOR_RE.match(actor) else "node",
        )

    async def on_change(event: Event, payload: Payload) -> None:
        assert isinstance(payload, NarrativeChange)
        if payload.change != "propose" or payload.version is not None:
            return
        actor = event.actor  # a ledger actor: the envelope's rule (core/actors.py)
        try:
            name = check_branch(payload.branch)
            await asyncio.to_thread(story.sync)
            if story.graph.branch(name) is not None:
                return  # already there: a later PROPOSE of the same glyph adds nothing
            if story.graph.branch(CANON) is None:
                story.proposals_without_canon += 1
                say_no_canon(f"{event.id} wanted {name}")
                return
            change = await asyncio.to_thread(story.create_branch, name, CANON, actor)
        except StoryError as exc:
            node.alert(SafetyAlert(reason=STORY_REFUSED, detail=f"{event.id}: {exc}"))
            return
        except StorageError as exc:  # not stored; the node said so once (its DiskHealth)
            log.warning("branch not made for %s: the disk refuses writes: %s", event.id, exc)
            return
        publish("branch", name, None, change.commit, actor)

    node.router.register("story", ["narrative/change"], on_change)
    node.add_service("story-sync", lambda: _keep_in_step(node, story, publish, say_no_canon))
    node.add_closer(story.close)
    return story


async def _keep_in_step(
    node: Node, story: Story, publish: _Announce, say_no_canon: _NoCanonNotice
) -> None:
    """The story graph kept in step with the ledger, this node's merges run, once a second."""
    from gibsey.core.envelope import SafetyAlert

    failing = ""  # the failure said last, until a round passes: said once, not every second
    while True:
        try:
            await asyncio.to_thread(story.sync)
            replaced = await asyncio.to_thread(story.graph.take_canon_replaced)
            if replaced is not None:
                node.alert(SafetyAlert(reason=CANON_REPLACED, detail=replaced))
            done = await asyncio.to_thread(story.run_executors, None)
            _report_merges(node, story, done, publish)
            say_no_canon()  # the turns held back since the last line, once it is due
            if failing:
                log.warning("story sync works again (it failed: %s)", failing)
            failing = ""
        except StorageError:
            # Reported to the node's DiskHealth, which says it once per episode (not once a
            # second); the view catches up by itself once the disk takes writes again.
            pass
        except Exception as exc:  # keep serving; a bad fold is reported, not fatal
            if repr(exc) != failing:  # a damaged database fails every round alike
                failing = repr(exc)
                log.exception("story sync failed (said again only if it fails otherwise)")
                node.alert(SafetyAlert(reason="story_sync_failed", detail=failing[:1000]))
        await asyncio.sleep(SYNC_INTERVAL_S)


class _NoCanonNotice:
    """Says the proposing turns refused for want of canon since it last said so, when due."""

    def __init__(self, node: Node, story: Story) -> None:
        self._node = node
        self._story = story
        self._alerts = DropAlerts(NO_CANON_ALERT_S, time.monotonic())
        self._last = ""

    def __call__(self, last: str | None = None) -> None:
        from gibsey.core.envelope import SafetyAlert

        self._last = last or self._last
        total = {STORY_REFUSED: self._story.proposals_without_canon}
        for due in self._alerts.due(total, time.monotonic()):
            detail = (
                f"{due.dropped} turn(s) proposing a branch in the last {due.since_s:.0f}s found "
                f"no {CANON} to branch from ({due.total} since the start; last: {self._last}): "
                "`gibsey story import` gives the node its corpus"
            )
            log.warning("%s: %s", STORY_REFUSED, detail)
            self._node.alert(SafetyAlert(reason=STORY_REFUSED, detail=detail), paced=True)


def _report_merges(node: Node, story: Story, done: list[Execution], publish: _Announce) -> None:
    """Announce each merge this node applied for a passed hearing; alert on each it could not."""
    from gibsey.core.envelope import SafetyAlert

    for x in done:
        h = story.graph.hearing(x.proposal)
        if x.status == "executed" and h is not None and h.branch:
            publish("merge", h.branch, None, h.target, h.proposer)
        elif x.status != "executed":
            node.alert(SafetyAlert(reason="merge_not_applied", detail=f"{x.proposal}: {x.detail}"))
