"""The story graph over GraphQL (strawberry): pages, branches, actors, edges, history, hearings.

`schema` is a plain strawberry Schema; resolvers find the Story and an event publisher in the
context (`StoryContext`). `execute(story, query, variables, publish=...)` runs a query without
HTTP (tests, the CLI). Every mutation publishes a `narrative/change` through `publish`.

Mounting it in the node's HTTP gateway (FastAPI):

    from strawberry.fastapi import GraphQLRouter
    from gibsey.node.story.graphql import schema, context_for
    from gibsey.node.story.part import story_of

    def publish(change, branch, page, version, actor):  # on the node's loop thread
        node.emit("narrative/change", NarrativeChange(branch=branch, page=page,
                  version=version, change=change), actor=actor)

    router = GraphQLRouter(schema, context_getter=lambda: context_for(story_of(node), publish))
    app.include_router(router, prefix="/graphql")

Resolvers are synchronous (SQLite reads of a few ms). Where strawberry calls them on the event
loop, `publish` may call node.emit directly; where they run in a worker thread, hop to the loop
with `loop.call_soon_threadsafe` (node.emit is not thread-safe).
"""

from __future__ import annotations

import asyncio
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import strawberry
from strawberry.types import ExecutionResult as GraphQLResult
from strawberry.types import Info

from .engine import Publish, Story
from .graph import Hearing
from .model import CANON, StoryError
from .text import Conflict


@dataclass
class StoryContext:
    story: Story
    publish: Publish | None = None


def context_for(story: Story | None, publish: Publish | None = None) -> StoryContext:
    if story is None:
        raise StoryError("the narrative engine is not attached on this node")
    return StoryContext(story, publish)


def _ctx(info: Info) -> StoryContext:
    ctx = info.context
    assert isinstance(ctx, StoryContext)
    ctx.story.sync()
    return ctx


@strawberry.type
class Page:
    id: str
    version: str
    symbol: str
    title: str
    index: int
    section: int | None
    chapter: str | None
    text: str


@strawberry.type
class Actor:
    name: str
    first_lamport: int
    commits: int


@strawberry.type
class Edge:
    src: str
    kind: str
    dst: str


@strawberry.type
class Commit:
    hash: str
    branch: str
    author: str
    message: str
    parents: list[str]
    source: str | None
    lamport: int
    pages_changed: int


@strawberry.type
class Branch:
    name: str
    head: str
    base: str | None
    created_by: str
    canon: bool

    @strawberry.field
    def pages(self, info: Info, symbol: str | None = None) -> list[Page]:
        return _pages(_ctx(info).story, self.head, symbol)

    @strawberry.field
    def history(self, info: Info, limit: int = 20) -> list[Commit]:
        g = _ctx(info).story.graph
        return [_commit(c) for c in g.log(self.head, limit)]


@strawberry.type
class Hunk:
    tag: str
    old_start: int
    old_end: int
    new_start: int
    new_end: int
    old: str
    new: str


@strawberry.type
class PageDiff:
    page: str
    old_version: str | None
    new_version: str | None
    words_removed: int
    words_added: int
    hunks: list[Hunk]


def _object_type(model: type, name: str, hidden: frozenset[str] = frozenset()) -> type:
    """The GraphQL object type `name` with the fields of the dataclass `model`, less `hidden`.

    The fields are declared once, on the model; resolvers return the model's own objects, which
    strawberry reads attribute by attribute (no `is_type_of` check on a type without
    interfaces). The type is made at run time, so a field names it in
    `strawberry.field(graphql_type=...)` and keeps the model in its Python signature for mypy."""
    hints = typing.get_type_hints(model)
    annotations = {f.name: hints[f.name] for f in dataclasses.fields(model) if f.name not in hidden}
    cls = types.new_class(name, (), {}, lambda ns: ns.update(__annotations__=annotations))
    return strawberry.type(cls, name=name)


# The story's own dataclasses, as they are (typed Any: mypy cannot see a type made at run time);
# a hearing's lamport orders the fold and stays out of the schema.
ConflictType: Any = _object_type(Conflict, "Conflict")
HearingType: Any = _object_type(Hearing, "Hearing", hidden=frozenset({"lamport"}))


@strawberry.type
class MergePreview:
    source: str
    into: str
    base: str
    pages_changed: list[str]
    conflicts: list[Conflict] = strawberry.field(graphql_type=list[ConflictType])


@strawberry.type
class ChangeResult:
    commit: str
    entry: str


def _page(h: str, story: Story) -> Page:
    v = story.graph.version(h)
    return Page(
        id=v.page,
        version=h,
        symbol=v.symbol,
        title=v.title,
        index=v.index,
        section=v.section,
        chapter=v.chapter,
        text=v.text,
    )


def _pages(story: Story, commit: str, symbol: str | None) -> list[Page]:
    pages = [_page(h, story) for h in story.graph.tree(commit).values()]
    if symbol:
        pages = [p for p in pages if p.symbol == symbol]
    return sorted(pages, key=lambda p: (p.section or 0, p.index, p.id))


def _commit(c: Any) -> Commit:
    return Commit(
        hash=c.hash,
        branch=c.branch,
        author=c.author,
        message=c.message,
        parents=list(c.parents),
        source=c.source,
        lamport=c.lamport,
        pages_changed=c.pages,
    )


def _branch(b: Any) -> Branch:
    return Branch(
        name=b.name, head=b.head, base=b.base, created_by=b.created_by, canon=b.name == CANON
    )


def _hearings(info: Info) -> list[Hearing]:
    return _ctx(info).story.graph.hearings()


@strawberry.type
class Query:
    @strawberry.field
    def branches(self, info: Info) -> list[Branch]:
        return [_branch(b) for b in _ctx(info).story.graph.branches()]

    @strawberry.field
    def branch(self, info: Info, name: str = CANON) -> Branch | None:
        b = _ctx(info).story.graph.branch(name)
        return _branch(b) if b else None

    @strawberry.field
    def page(self, info: Info, id: str, ref: str = CANON) -> Page | None:
        story = _ctx(info).story
        h = story.graph.tree(story.graph.resolve(ref)).get(id)
        return _page(h, story) if h else None

    @strawberry.field
    def pages(self, info: Info, ref: str = CANON, symbol: str | None = None) -> list[Page]:
        story = _ctx(info).story
        return _pages(story, story.graph.resolve(ref), symbol)

    @strawberry.field
    def actors(self, info: Info) -> list[Actor]:
        return [
            Actor(name=n, first_lamport=f, commits=c) for n, f, c in _ctx(info).story.graph.actors()
        ]

    @strawberry.field
    def edges(self, info: Info, kind: str | None = None, node: str | None = None) -> list[Edge]:
        return [Edge(src=s, kind=k, dst=d) for s, k, d in _ctx(info).story.graph.edges(kind, node)]

    @strawberry.field
    def history(self, info: Info, ref: str = CANON, limit: int = 20) -> list[Commit]:
        g = _ctx(info).story.graph
        return [_commit(c) for c in g.log(g.resolve(ref), limit)]

    @strawberry.field
    def diff(self, info: Info, a: str, b: str, page: str | None = None) -> list[PageDiff]:
        out = []
        for d in _ctx(info).story.diff(a, b, page):
            removed, added = d.diff.stats
            out.append(
                PageDiff(
                    page=d.page,
                    old_version=d.old,
                    new_version=d.new,
                    words_removed=removed,
                    words_added=added,
                    hunks=[
                        Hunk(
                            tag=h.tag,
                            old_start=h.a_start,
                            old_end=h.a_end,
                            new_start=h.b_start,
                            new_end=h.b_end,
                            old=h.old,
                            new=h.new,
                        )
                        for h in d.diff.hunks
                    ],
                )
            )
        return out

    @strawberry.field
    def merge_preview(self, info: Info, source: str, into: str = CANON) -> MergePreview:
        plan = _ctx(info).story.plan_merge(source, into)
        return MergePreview(
            source=source,
            into=into,
            base=plan.base,
            pages_changed=sorted(plan.changes),
            conflicts=plan.conflicts,
        )

    hearings = strawberry.field(resolver=_hearings, graphql_type=list[HearingType])


def _announce(
    ctx: StoryContext, change: str, branch: str, page: str | None, version: str, actor: str
) -> None:
    if ctx.publish is not None:
        ctx.publish(change, branch, page, version, actor)


@strawberry.type
class Mutation:
    @strawberry.mutation
    def create_branch(self, info: Info, name: str, actor: str, source: str = CANON) -> ChangeResult:
        ctx = _ctx(info)
        c = ctx.story.create_branch(name, source, actor)
        _announce(ctx, "branch", name, None, c.commit, actor)
        return ChangeResult(commit=c.commit, entry=c.entry.hash_hex)

    @strawberry.mutation
    def write_page(
        self,
        info: Info,
        branch: str,
        page: str,
        text: str,
        actor: str,
        title: str | None = None,
        symbol: str | None = None,
    ) -> ChangeResult:
        ctx = _ctx(info)
        c = ctx.story.write(branch, page, text, actor, title=title, symbol=symbol)
        version = ctx.story.graph.tree(c.commit)[page]
        _announce(ctx, "write", branch, page, version, actor)
        return ChangeResult(commit=c.commit, entry=c.entry.hash_hex)

    @strawberry.mutation
    def propose_merge(
        self, info: Info, source: str, actor: str, into: str = CANON, prefer: str | None = None
    ) -> ChangeResult:
        ctx = _ctx(info)
        if prefer not in (None, "ours", "theirs"):
            raise StoryError("prefer must be ours or theirs")
        c = ctx.story.propose(source, actor, into, None, prefer)  # type: ignore[arg-type]
        _announce(ctx, "propose", source, None, c.commit, actor)
        return ChangeResult(commit=c.commit, entry=c.entry.hash_hex)


schema = strawberry.Schema(query=Query, mutation=Mutation)


def execute(
    story: Story,
    query: str,
    variables: dict[str, Any] | None = None,
    publish: Publish | None = None,
) -> GraphQLResult:
    """Run one GraphQL operation against `story` (no HTTP)."""
    return schema.execute_sync(query, variables, context_value=StoryContext(story, publish))


async def execute_async(
    story: Story,
    query: str,
    variables: dict[str, Any] | None = None,
    publish: Publish | None = None,
) -> GraphQLResult:
    return await asyncio.to_thread(execute, story, query, variables, publish)
