"""`gibsey story ...`: the story's log, pages, diffs, branches, writes and merge proposals.

Commands that change the story append to the node's ledger and then announce a
`narrative/change` on the node's spine (the announcement is a courtesy: the change is durable
once the command returns, and `recorded, but not announced` says when no broker answered).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gibsey.core.console import make_console, print_exact
from gibsey.core.storage import StorageError
from gibsey.ledger.errors import LedgerError, Rejected

from .corpus import SAMPLE, read_corpus
from .engine import Change, Story
from .model import CANON, StoryError
from .text import render, render_plain

# Rich on a terminal, plain text into a pipe (core/console.py); errors and warnings on stderr.
console = make_console()
errors = make_console(stderr=True)
PublishHook = Callable[[str, dict[str, Any]], None]  # (kind, payload) - tests
_publish_hook: PublishHook | None = None


def set_publish_hook(hook: PublishHook | None) -> None:
    global _publish_hook
    _publish_hook = hook


def _data_dir(args: argparse.Namespace) -> Path:
    from gibsey.core.config import resolve_data_dir

    return resolve_data_dir(getattr(args, "data", None))


@contextmanager
def _opened(args: argparse.Namespace, *, sync: bool = True) -> Iterator[Story]:
    """The node's story (synced with its ledger unless told not to), closed when done."""
    story = Story.open(_data_dir(args))
    try:
        if sync:
            story.sync()
        yield story
    finally:
        story.close_all()


def _announce(
    args: argparse.Namespace,
    change: str,
    branch: str,
    page: str | None,
    version: str | None,
    actor: str,
    lamport: int,
) -> None:
    payload = {"branch": branch, "page": page, "version": version, "change": change}
    if _publish_hook is not None:
        _publish_hook("narrative/change", payload)
        return
    from gibsey.core.announce import announce
    from gibsey.core.envelope import NarrativeChange

    problem = announce(
        _data_dir(args),
        "narrative/change",
        NarrativeChange.model_validate(
            {"branch": branch, "page": page, "version": version, "change": change}
        ),
        actor=actor,
        lamport=lamport,
    )
    if problem:
        errors.print(f"[yellow]recorded, but not announced on MQTT: {problem}[/yellow]")


def _announce_change(
    args: argparse.Namespace,
    kind: str,
    branch: str,
    change: Change,
    *,
    page: str | None = None,
    version: str | None = None,
) -> None:
    """Announce what this command appended, by --actor at its entry's lamport; the version
    announced is the change's commit unless a page version is named."""
    _announce(args, kind, branch, page, version or change.commit, args.actor, change.entry.lamport)


def _short(h: str | None) -> str:
    return h[:12] if h else "-"


def cmd_log(args: argparse.Namespace) -> int:
    with _opened(args) as story:
        ref = args.ref or CANON
        table = Table(title=f"story log {ref}", title_justify="left")
        for col in ("commit", "author", "pages", "lamport", "message"):
            table.add_column(col)
        for c in story.graph.log(story.graph.resolve(ref), args.limit):
            msg = c.message + (f" [dim](merge of {c.source})[/dim]" if c.source else "")
            table.add_row(_short(c.hash), c.author, str(c.pages), str(c.lamport), msg)
        console.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _opened(args) as story:
        g = story.graph
        if args.page:
            h, v = story.page(args.ref, story.page_id(args.ref, args.page))
            if args.raw or not console.is_terminal:
                print_exact(v.text)  # byte for byte what is stored: no header, no wrapping
                return 0
            console.print(
                f"[bold]{v.title}[/bold]  page {v.page} - {v.symbol} - version {_short(h)}"
            )
            console.print(v.text, markup=False, soft_wrap=True)
            return 0
        hearing = next((x for x in g.hearings() if x.proposal.startswith(args.ref)), None)
        if hearing is not None and len(args.ref) >= 8:
            console.print(
                f"hearing {_short(hearing.proposal)}: {hearing.title}\n"
                f"  {hearing.source} -> {hearing.branch}, merge {_short(hearing.target)}, "
                f"status [bold]{hearing.status}[/bold], by {hearing.proposer}"
            )
            return 0
        commit = g.commit(g.resolve(args.ref))
        b = g.branch(args.ref)
        if b is not None:
            console.print(
                f"branch [bold]{b.name}[/bold] at {_short(b.head)}"
                + (f", from {b.base}" if b.base else "")
                + f", created by {b.created_by}"
            )
        console.print(
            f"commit {commit.hash}\n  author {commit.author}, lamport {commit.lamport}\n"
            f"  parents {', '.join(_short(p) for p in commit.parents) or '(root)'}\n"
            f"  {commit.message}"
        )
        tree = g.tree(commit.hash)
        table = Table(title=f"{len(tree)} pages", title_justify="left")
        for col in ("page", "symbol", "title", "version"):
            table.add_column(col)
        shown = sorted(tree.items())[: args.limit]
        for page, h in shown:
            v = g.version(h)
            title = v.title if len(v.title) <= 60 else v.title[:59] + "…"  # cut, and said so
            table.add_row(page, v.symbol, Text(title), _short(h))  # a title's [..] is no markup
        console.print(table)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with _opened(args) as story:
        a, b = (args.a, args.b) if args.b else (CANON, args.a)
        page = args.page and story.page_id(b, story.page_id(a, args.page))
        diffs = story.diff(a, b, page)
        if not diffs:
            console.print(f"{a} and {b} read the same")
        for d in diffs:
            removed, added = d.diff.stats
            console.print(
                f"[bold]page {d.page}[/bold] {_short(d.old)} -> {_short(d.new)}  "
                f"[red]-{removed}[/red] [green]+{added}[/green] words"
            )
            if console.is_terminal:
                console.print(render(d.diff, args.context))
                console.print()
            else:  # colours mean nothing in a pipe: git's --word-diff=plain markers instead
                print_exact(render_plain(d.diff, args.context) + "\n")
    return 0


def cmd_branch(args: argparse.Namespace) -> int:
    with _opened(args) as story:
        if not args.name:
            table = Table(title="branches", title_justify="left")
            for col in ("branch", "head", "from", "created by", "updated"):
                table.add_column(col)
            for b in story.graph.branches():
                name = f"[bold]{b.name}[/bold]" if b.name == CANON else b.name
                table.add_row(name, _short(b.head), b.base or "", b.created_by, str(b.updated))
            console.print(table)
            return 0
        change = story.create_branch(args.name, args.source, args.actor)
        console.print(f"branch {args.name} at {_short(change.commit)} (from {args.source})")
        _announce_change(args, "branch", args.name, change)
    return 0


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return str(args.text)
    # Bytes decoded, not text mode: a page keeps its CRLFs and every other byte as written.
    if args.file:
        return Path(args.file).read_bytes().decode("utf-8")
    text = sys.stdin.buffer.read().decode("utf-8")
    if not text:
        # Under cron, CI or nohup stdin is empty: the page would have been emptied unasked.
        raise StoryError(
            "no text on standard input: nothing was written (give the page's text on stdin, "
            "--file FILE or --text; --text '' empties a page on purpose)"
        )
    return text


def cmd_write(args: argparse.Namespace) -> int:
    text = _read_text(args)
    with _opened(args) as story:
        args.page = story.page_id(args.branch, args.page)
        change = story.write(
            args.branch,
            args.page,
            text,
            args.actor,
            message=args.message or "",
            title=args.title,
            symbol=args.symbol,
        )
        h, _ = story.page(args.branch, args.page)
        console.print(
            f"{args.branch}: page {args.page} version {_short(h)}, commit {_short(change.commit)}"
        )
        _announce_change(args, "write", args.branch, change, page=args.page, version=h)
    return 0


def _resolutions(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in args.resolve or []:
        page, sep, path = item.partition("=")
        if not sep:
            raise StoryError(f"--resolve {item!r}: expected PAGE=FILE")
        out[page] = Path(path).read_text(encoding="utf-8")
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    resolutions = _resolutions(args)
    with _opened(args) as story:
        change = story.merge(args.source, args.into, args.actor, resolutions, args.prefer)
        console.print(f"merged {args.source} into {args.into}: {_short(change.commit)}")
        _announce_change(args, "merge", args.into, change)
    return 0


def cmd_propose(args: argparse.Namespace) -> int:
    resolutions = _resolutions(args)
    with _opened(args) as story:
        if args.dry_run:
            plan = story.plan_merge(args.source, args.into, resolutions, args.prefer)
            console.print(
                f"{args.source} -> {args.into}: {len(plan.changes)} pages change, "
                f"{len(plan.conflicts)} conflicts"
            )
            for c in plan.conflicts:
                console.print(Text("  " + c.describe(), style="red"))
            return 1 if plan.conflicts else 0
        change = story.propose(
            args.source, args.actor, args.into, resolutions, args.prefer, args.title
        )
        console.print(
            f"hearing {change.entry.hash_hex[:12]} opened: merge {args.source} into {args.into} "
            f"(merge commit {_short(change.commit)})\n"
            f"vote with: gibsey ledger vote {change.entry.hash_hex[:12]} yes|no --as ACTOR"
        )
        _announce_change(args, "propose", args.source, change)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Run this node's executor for narrative-merge hearings that passed (the daemon does this
    on its own; this is for a node run from the command line)."""
    with _opened(args) as story:

        def publish(
            change: str, branch: str, page: str | None, version: str | None, actor: str
        ) -> None:
            _announce(args, change, branch, page, version, actor, story.ledger.store.max_lamport)

        done = story.run_executors(publish)
        for x in done:
            console.print(f"{x.proposal[:12]} {x.status}: {x.detail}")
        if not done:
            console.print("no passed hearing waiting here")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    root = SAMPLE if args.sample else args.dir
    if root is None:
        raise StoryError("give a corpus directory, or --sample for the bundled sample")
    with _working(f"checking {root}"):
        corpus = read_corpus(Path(root), strict=args.strict)
    for note in corpus.notes:  # each correction once, on one line, as plain text
        console.print(str(note), markup=False, highlight=False, soft_wrap=True)
    with _opened(args) as story, _pages_bar() as progress:
        change = story.import_corpus(corpus, args.branch, args.actor, progress=progress)
        done = f"imported {len(corpus.pages)} pages into {args.branch} "
        if change.shared is not None:
            done += (
                f"({change.entries} ledger entry): the same pages as the import on "
                f"{change.shared}, whose commit {_short(change.commit)} it shares"
            )
        else:
            reused = f", {change.reused} pages already on the ledger" if change.reused else ""
            done += f"({change.entries} ledger entries{reused}), commit {_short(change.commit)}"
        console.print(done, markup=False, highlight=False, soft_wrap=True)
        _announce_change(args, "branch", args.branch, change)
    return 0


@contextmanager
def _working(what: str) -> Iterator[None]:
    """A spinner on a terminal's stderr while `what` is done; nothing into a pipe or a file."""
    if not errors.is_terminal:
        yield
        return
    with errors.status(what):
        yield


@contextmanager
def _pages_bar() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar of the pages imported, on a terminal's stderr (gone when done); into a
    pipe or a file, none: a script reads only the result line."""
    if not errors.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("importing pages", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task("pages", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def cmd_rebuild(args: argparse.Namespace) -> int:
    with _opened(args, sync=False) as story:
        n = story.sync(rebuild=True)
        console.print(f"story graph rebuilt from {n} ledger entries")
    return 0


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except StorageError:
            raise  # the disk refused a write: said by `gibsey` itself, exit 75 (gibsey/cli.py)
        except (StoryError, LedgerError, Rejected, OSError, UnicodeDecodeError) as exc:
            errors.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
            return 1

    return run


_Command = Callable[[argparse.Namespace], int]
# Adds one subcommand: (name, command, help) -> its parser, for the command's own arguments.
_AddCommand = Callable[[str, _Command, str], argparse.ArgumentParser]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "story",
        parents=[common],
        help="the narrative engine: pages, branches, diffs, merges put to the room",
        description="Git for story: branches of the corpus on the ledger; merges into canon "
        f"({CANON}) are proposed as hearings and applied when the room votes them through.",
    )
    ss = p.add_subparsers(dest="story_command", metavar="SUBCOMMAND")

    def add(name: str, fn: _Command, help_: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = ss.add_parser(
            name, parents=[common], help=help_, description=help_
        )
        q.set_defaults(func=_guard(fn))
        return q

    _add_reading_commands(add)
    _add_branch_and_write(add)
    _add_merge_commands(add)
    q = add("import", cmd_import, "import a corpus in the public Gibsey layout (all or nothing)")
    # One corpus, said once: argparse refuses neither or both with its usage line, exit 2, as
    # any other usage error (DIR with --sample imported the sample and ignored DIR).
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "dir", nargs="?", metavar="DIR", help="corpus directory (index.json, metadata/, pages/)"
    )
    which.add_argument(
        "--sample", action="store_true", help="import the bundled sample corpus (instead of DIR)"
    )
    q.add_argument("--branch", default=CANON)
    q.add_argument(
        "--strict",
        action="store_true",
        help="refuse the corpus on any warning (unnamed page files, pageIndex numbers that "
        "differ from index.json, a section number index.json contradicts), not only on errors",
    )
    _actor_option(q)
    add("rebuild", cmd_rebuild, "rebuild the story graph from the ledger")

    def usage(_: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def _actor_option(q: argparse.ArgumentParser) -> None:
    q.add_argument("--actor", default="node", help="who makes the change (default: node)")


def _add_reading_commands(add: _AddCommand) -> None:
    q = add("log", cmd_log, "history of a branch or commit, newest first")
    q.add_argument("ref", nargs="?", help=f"branch or commit (default: {CANON})")
    q.add_argument("-n", "--limit", type=int, default=30)
    q = add("show", cmd_show, "a branch, commit or hearing; or a page's text on it")
    q.add_argument("ref", nargs="?", default=CANON, help="branch, commit or hearing")
    q.add_argument("page", nargs="?", help="page id (`1` finds `001`): print that page")
    q.add_argument(
        "--raw",
        action="store_true",
        help="the page's text exactly as stored, nothing else (the default into a pipe)",
    )
    q.add_argument("-n", "--limit", type=int, default=40, help="pages listed")
    q = add("diff", cmd_diff, f"word diff between two refs (one ref: {CANON} against it)")
    q.add_argument("a")
    q.add_argument("b", nargs="?")
    q.add_argument("--page", help="only this page")
    q.add_argument("--context", type=int, default=8, help="unchanged words shown around changes")


def _add_branch_and_write(add: _AddCommand) -> None:
    q = add("branch", cmd_branch, "list branches, or create one")
    q.add_argument("name", nargs="?")
    q.add_argument("--from", dest="source", default=CANON, help="branch or commit to start at")
    _actor_option(q)
    q = add("write", cmd_write, "write a new version of a page on a branch")
    q.add_argument("branch")
    q.add_argument("page")
    src = q.add_mutually_exclusive_group()
    src.add_argument(
        "--text", help="the page's new text (default: read stdin, refused when it is empty)"
    )
    src.add_argument("--file", help="read the page's new text from FILE")
    q.add_argument("--title", help="title (required for a new page)")
    q.add_argument("--symbol", help="character symbol slug (required for a new page)")
    q.add_argument("-m", "--message")
    _actor_option(q)


def _merge_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--resolve", action="append", metavar="PAGE=FILE", help="resolved text")
    q.add_argument("--prefer", choices=["ours", "theirs"], help="settle every conflict so")
    _actor_option(q)


def _add_merge_commands(add: _AddCommand) -> None:
    q = add("merge", cmd_merge, f"merge a branch into another branch (not {CANON}: propose)")
    q.add_argument("source")
    q.add_argument("--into", required=True)
    _merge_options(q)
    q = add("propose", cmd_propose, f"open a hearing to merge a branch into {CANON}")
    q.add_argument("source")
    q.add_argument("--into", default=CANON)
    q.add_argument("--title")
    q.add_argument("--dry-run", action="store_true", help="only report what would merge")
    _merge_options(q)
    add("apply", cmd_apply, "apply passed merge hearings on this node (the daemon does it)")
