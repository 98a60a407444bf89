"""The story: the pages on a branch of the narrative engine (GraphQL at /graphql says more)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.state import State
from gibsey.node.story.engine import Story
from gibsey.node.story.model import CANON, PageVersion, UnknownRef

router = APIRouter(tags=["story"])


def _page_json(version: str, v: PageVersion) -> dict[str, Any]:
    """A page as GraphQL's Page type has it."""
    return {
        "id": v.page,
        "version": version,
        "symbol": v.symbol,
        "title": v.title,
        "index": v.index,
        "section": v.section,
        "chapter": v.chapter,
        "text": v.text,
    }


def read_pages(story: Story, ref: str) -> list[dict[str, Any]]:
    """Every page at `ref` (a branch, or a commit's prefix), in corpus order. Blocking: SQLite
    reads, in step with the ledger first, as GraphQL's resolvers are."""
    story.sync()
    graph = story.graph
    with graph.lock:  # one consistent tree, whatever the story's sync service does meanwhile
        tree = graph.tree(graph.resolve(ref))
        versions = [(h, graph.version(h)) for h in tree.values()]
    versions.sort(key=lambda hv: (hv[1].section or 0, hv[1].index, hv[1].page))
    return [_page_json(h, v) for h, v in versions]


@router.get("/api/story/pages", summary="Pages of the story")
async def story_pages(
    gw: State,
    branch: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    story = gw.story()
    ref = branch or CANON
    try:
        pages = await asyncio.to_thread(read_pages, story, ref)
    except UnknownRef as exc:
        if branch is None:  # nothing imported yet (`gibsey story import`): no pages
            return {"branch": ref, "pages": []}
        raise ApiError(404, str(exc)) from exc
    return {"branch": ref, "pages": pages[:limit]}
