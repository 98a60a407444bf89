"""The story: the pages on a branch of the narrative engine (GraphQL at /graphql says more)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gibsey.node.gateway.errors import ApiError
from gibsey.node.gateway.openapi import PART_MAY_BE_MISSING
from gibsey.node.gateway.responses import READ, PagesAnswer
from gibsey.node.gateway.state import State
from gibsey.node.story.engine import Story
from gibsey.node.story.limits import MAX_RESPONSE_BYTES
from gibsey.node.story.model import CANON, PageVersion, UnknownRef

router = APIRouter(tags=["story"])
# About the most page text one answer carries, as GraphQL's (a 42 MB corpus asked for whole by
# six strangers at once took the node from 383 to 763 MB: every page's text read, then sliced).
MAX_ANSWER_BYTES = MAX_RESPONSE_BYTES


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


def read_pages(
    story: Story, ref: str, limit: int, offset: int = 0
) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` pages at `ref` (a branch, or a commit's prefix), in corpus order from the
    `offset`-th, as many as fit in about MAX_ANSWER_BYTES of text (one at least); and whether
    pages follow them. Blocking: SQLite reads, in step with the ledger first, as GraphQL's
    resolvers are."""
    story.sync()
    graph = story.graph
    with graph.lock:  # one consistent tree, whatever the story's sync service does meanwhile
        order = graph.in_reading_order(graph.tree(graph.resolve(ref)).values())
        pages: list[dict[str, Any]] = []
        size = 0
        for h in order[offset : offset + limit]:
            page = _page_json(h, graph.version(h))
            size += len(page["text"].encode())
            if pages and size > MAX_ANSWER_BYTES:
                break
            pages.append(page)
    return pages, offset + len(pages) < len(order)


@router.get(
    "/api/story/pages",
    summary="Pages of the story",
    responses={
        **PART_MAY_BE_MISSING,
        404: {"description": "no such branch (a branch named that does not exist)"},
    },
    response_model=PagesAnswer,
    **READ,
)
async def story_pages(
    gw: State,
    branch: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """Up to `limit` pages in corpus order from the `offset`-th (0: the first), within about
    8 MiB of text; `more` says whether the branch has pages beyond them: ask again with
    `offset` past the last one given (GraphQL's `page(id)` reads any one of them)."""
    story = gw.story()
    ref = branch or CANON
    try:
        pages, more = await asyncio.to_thread(read_pages, story, ref, limit, offset)
    except UnknownRef as exc:
        if branch is None:  # nothing imported yet (`gibsey story import`): no pages
            return {"branch": ref, "pages": [], "more": False}
        raise ApiError(404, str(exc)) from exc
    return {"branch": ref, "pages": pages, "more": more}
