"""The story graph over GraphQL (strawberry): pages, branches, actors, edges, history, hearings.

`schema` is a plain strawberry Schema; resolvers find the Story and an event publisher in the
context (`StoryContext`). `execute(story, query, variables, publish=...)` runs a query without
HTTP (tests, the CLI). Every mutation publishes a `narrative/change` through `publish`.

What one operation may cost is bounded before and while it runs (the schema's extensions):
its document (MAX_QUERY_TOKENS, checked while parsing), its depth (MAX_DEPTH), its aliases
(MAX_ALIASES), and what it makes (ResponseBudget: MAX_RESPONSE_FIELDS fields, about
MAX_RESPONSE_BYTES of answer). A mutation runs only when its context says the caller may write
(`StoryContext.may_write`, false unless given): the gateway sets it from the node's write token
(node/gateway/graphql_route.py), so GraphQL writes need what REST writes need; a refused one is
one error with the code WRITE_REFUSED, and nothing runs.

Resolvers are synchronous (SQLite reads and ledger writes): the gateway runs each operation in
a worker thread (`execute_sync`), never on the node's event loop; `publish` hops to the loop
(node.emit is not thread-safe).
"""

from __future__ import annotations

import asyncio
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import ExecutionResult as CoreResult
from graphql import GraphQLError, GraphQLResolveInfo
from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.types import ExecutionContext, Info
from strawberry.types import ExecutionResult as GraphQLResult
from strawberry.types.graphql import OperationType

from gibsey.core.storage import StorageError
from gibsey.ledger.errors import LedgerError

from .engine import Publish, Story
from .graph import Hearing
from .limits import MAX_ALIASES, MAX_DEPTH, MAX_QUERY_TOKENS, MAX_RESPONSE_BYTES
from .model import CANON, StoryError, reading_key
from .text import Conflict

MAX_RESPONSE_FIELDS = 100_000
WRITE_REFUSED = "UNAUTHENTICATED"  # the `code` of a refused mutation's error
TOO_LARGE = "RESPONSE_TOO_LARGE"


@dataclass
class StoryContext:
    story: Story
    publish: Publish | None = None
    # Whether this caller may run mutations, and if not, why (the error it gets).
    may_write: bool = False
    refusal: str = "writes need the node's write token"


def context_for(
    story: Story | None,
    publish: Publish | None = None,
    *,
    may_write: bool = False,
    refusal: str | None = None,
) -> StoryContext:
    if story is None:
        raise StoryError("the narrative engine is not attached on this node")
    ctx = StoryContext(story, publish, may_write)
    if refusal:
        ctx.refusal = refusal
    return ctx


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
    return sorted(pages, key=lambda p: reading_key(p.section, p.chapter, p.index, p.id))


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
        h = story.graph.tree(story.graph.resolve(ref)).get(story.page_id(ref, id))
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
        page = ctx.story.page_id(branch, page)  # `3` is page 003, as on the command line
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


class WritesNeedToken(SchemaExtension):
    """A mutation runs only for a caller that may write (`StoryContext.may_write`): otherwise
    the answer is one error saying why, with the code WRITE_REFUSED, and no resolver runs."""

    def on_execute(self) -> Iterator[None]:
        ec = self.execution_context
        ctx = ec.context
        if ec.operation_type is OperationType.MUTATION and not (
            isinstance(ctx, StoryContext) and ctx.may_write
        ):
            why = ctx.refusal if isinstance(ctx, StoryContext) else StoryContext.refusal
            error = GraphQLError(why, extensions={"code": WRITE_REFUSED})
            ec.result = CoreResult(data=None, errors=[error])  # set before: nothing executes
        yield


class ResponseBudget(SchemaExtension):
    """Bounds what one operation makes, counted as its fields resolve: past MAX_RESPONSE_FIELDS
    fields or about MAX_RESPONSE_BYTES of answer, every field left is refused unresolved, and
    the answer is one error (no partial data). Introspection counts too: the depth limit skips
    it, and its types nest without end."""

    def __init__(self, *, execution_context: ExecutionContext | None = None) -> None:
        self.fields = 0
        self.size = 0
        self.over = False

    def _refusal(self) -> GraphQLError:
        return GraphQLError(
            f"the answer would pass the node's limit ({MAX_RESPONSE_FIELDS:,} fields, "
            f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB): ask for fewer fields or pages",
            extensions={"code": TOO_LARGE},
        )

    def resolve(
        self,
        _next: Callable[..., Any],
        root: Any,
        info: GraphQLResolveInfo[Any],
        *args: str,
        **kwargs: Any,
    ) -> Any:
        if self.over:
            raise self._refusal()
        value = _next(root, info, *args, **kwargs)
        self.fields += 1
        # The key, quotes and separators, and the text: what the JSON answer will hold.
        self.size += len(info.field_name) + 8 + (len(value) if isinstance(value, str) else 0)
        if self.fields > MAX_RESPONSE_FIELDS or self.size > MAX_RESPONSE_BYTES:
            self.over = True
            raise self._refusal()
        return value

    def on_execute(self) -> Iterator[None]:
        yield
        if self.over:
            self.execution_context.result = CoreResult(data=None, errors=[self._refusal()])


class StorySchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # A client's mistakes (a bad query, an unknown page, a limit) are its answer, not the
        # node's trouble: only failures from inside the node are logged (with their traceback).
        # An error without a path was found before anything ran (parsing, validation). A write
        # the disk refused is said once by the node (DiskHealth), not once per mutation.
        answers = StoryError | LedgerError | GraphQLError | StorageError
        inside = [
            e
            for e in errors
            if e.path is not None
            and e.original_error is not None
            and not isinstance(e.original_error, answers)
        ]
        super().process_errors(inside, execution_context)


schema = StorySchema(
    query=Query,
    mutation=Mutation,
    extensions=[
        lambda: MaxTokensLimiter(max_token_count=MAX_QUERY_TOKENS),
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        WritesNeedToken,
        ResponseBudget,
    ],
)


def execute(
    story: Story,
    query: str,
    variables: dict[str, Any] | None = None,
    publish: Publish | None = None,
    *,
    may_write: bool = True,
) -> GraphQLResult:
    """Run one GraphQL operation against `story` (no HTTP: the caller is the node's own user,
    who may write unless told otherwise)."""
    ctx = StoryContext(story, publish, may_write)
    return schema.execute_sync(query, variables, context_value=ctx)


async def execute_async(
    story: Story,
    query: str,
    variables: dict[str, Any] | None = None,
    publish: Publish | None = None,
) -> GraphQLResult:
    return await asyncio.to_thread(execute, story, query, variables, publish)
