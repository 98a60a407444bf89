"""`gibsey ledger ...`: look at, check and add to the node's ledger.

`gift`, `mint` and `burn` call the publish hook with a `gift/txn` event (and `balance` with a
`gift/balance` snapshot) so the daemon can put them on MQTT; the hook is injected by whoever
registers these commands (`register(..., publish_hook=...)`), and is None when there is no
event spine to publish to.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from rich.table import Table

from gibsey.core.console import make_console
from gibsey.core.identity import write_atomic

from .bodies import ACTIONS, CHOICES, KNOWN_TYPES
from .economy import EntryEffect
from .entry import Entry
from .errors import LedgerError, Rejected
from .governance import ProposalStatus, executions
from .ledger import Ledger

PublishHook = Callable[[str, dict[str, Any]], None]  # (event, payload), e.g. ("gift/txn", {...})

_publish_hook: PublishHook | None = None
# soft_wrap: a line is never broken at the terminal's width (a key and a seq stay greppable).
# Rich on a terminal, plain text into a pipe (core/console.py).
console = make_console()
errors = make_console(stderr=True)


def set_publish_hook(hook: PublishHook | None) -> None:
    global _publish_hook
    _publish_hook = hook


def _publish(
    args: argparse.Namespace, event: str, payload: dict[str, Any], wrote: bool = True
) -> None:
    """Hand the event to the hook (tests) or, by default, announce it on the node's spine. A
    broker that cannot be reached is said on stderr (stdout stays the command's answer); a read
    (`wrote=False`) recorded nothing, and says only that its snapshot was not announced."""
    if _publish_hook is not None:
        _publish_hook(event, payload)
        return
    from gibsey.core.config import resolve_data_dir

    from .announce import announce_ledger_event

    problem = announce_ledger_event(resolve_data_dir(args.data), event, payload)
    if problem:
        what = "recorded, but not announced" if wrote else "not announced"
        errors.print(f"[yellow]{what} on MQTT: {problem}[/yellow]")


def _open(args: argparse.Namespace) -> Ledger:
    from gibsey.core.config import resolve_data_dir

    return Ledger.open(resolve_data_dir(args.data))


def _open_to_read(args: argparse.Namespace) -> Ledger:
    """The ledger for a read command: with the node's key when there is one (its feed is shown
    as "us"), else with a key of the moment, never saved: a ledger copied alone to be checked
    elsewhere gets no node.key from being read."""
    from nacl.signing import SigningKey

    from gibsey.core.config import resolve_data_dir
    from gibsey.core.identity import KEY_FILENAME, load_or_create

    data_dir = resolve_data_dir(args.data)
    if (data_dir / KEY_FILENAME).exists():
        return Ledger.open(data_dir, load_or_create(data_dir).signing_key)
    return Ledger.open(data_dir, SigningKey.generate())


def _short(b: bytes) -> str:
    return b.hex()[:8]


def txn_payload(e: Entry, applied: bool, note: str) -> dict[str, Any]:
    """The `gift/txn` event payload for a gift, mint or burn entry."""
    return {
        "entry": e.hash_hex,
        "author": e.author_hex,
        "seq": e.seq,
        "lamport": e.lamport,
        "wall": e.wall,
        "type": e.type,
        "body": e.body,
        "applied": applied,
        "note": note,
    }


def _summary(e: Entry) -> str:
    b = e.body
    if e.type == "mint":
        return f"{b['actor']} +{b['amount']} ({b['ritual']})"
    if e.type == "gift":
        memo = f" \u201c{b['memo']}\u201d" if "memo" in b else ""
        return f"{b['from']} \u2192 {b['to']} {b['amount']}{memo}"
    if e.type == "burn":
        return f"{b['actor']} -{b['amount']}" + (f" ({b['reason']})" if "reason" in b else "")
    if e.type == "proposal":
        title = f"\u201c{b['title']}\u201d"
        return f"{b['action']} {title} by {b['proposer']} target {b['target'][:12]}"
    if e.type == "vote":
        return f"{b['actor']} votes {b['choice']} on {b['proposal'][:12]}"
    if e.type == "outcome":
        return f"{b['action']} {b['proposal'][:12]}: {b['status']} {b['detail']}"
    if e.type == "members":
        return f"gallery of {len(b['nodes'])}: " + " ".join(k[:12] for k in b["nodes"])
    if e.type == "rebirth":
        return (
            f"{b['node']} reborn after {b['uptime_ms'] / 1000:.1f}s: {b['cause']} "
            f"({b['restarts']} in the crash window)"
        )
    if e.type == "story-object":
        return f"story object {b['hash'][:12]} part {b['part'] + 1}/{b['parts']}"
    if e.type == "story-ref":
        move = f"from {b['old'][:12]}" if "old" in b else f"new (from {b.get('from', '-')})"
        return f"branch {b['branch']} -> {b['commit'][:12]} by {b['actor']}, {move}"
    return str(b)


# ---- commands ----------------------------------------------------------------------------------


def _say_left_out(ledger: Ledger) -> None:
    """What a read command left out, on standard error: each bad stored row it set aside, and
    the acknowledged entries only the entry log holds (a running node's open batch, or a commit
    the disk refused after a stop), which no process but the writer reads until they are
    committed: an export or a --heads file is short of them, and says so."""
    for bad in ledger.store.bad_rows():
        errors.print(
            f"[yellow]quarantined: {bad} - it and the later entries of that feed count for "
            "nothing here and are not served (`gibsey ledger verify`)[/yellow]"
        )
    lost = ledger.store.unstored(ledger.author)
    if lost:
        errors.print(f"not stored: {lost}", markup=False)
    logged = ledger.store.logged_only()
    if logged:
        errors.print(
            f"not read: {logged} acknowledged entries are in the entry log only (a running "
            "node's batch not committed yet, or a commit the disk refused); they are stored "
            "at that commit, or at the next write once the disk has room",
            markup=False,
        )


def cmd_verify(args: argparse.Namespace) -> int:
    with closing(_open_to_read(args)) as ledger:
        report = ledger.store.verify()
        forks = len(ledger.store.quarantine())
        logged = ledger.store.logged_only()
        lost = ledger.store.unstored(ledger.author)
    for bad in report.bad_rows:
        console.print(f"BAD: {bad}")
    if lost:
        console.print(f"NOT STORED: {lost}", markup=False)
    if report.bad_rows:
        console.print(
            f"{len(report.bad_rows)} bad row(s) in {report.entries} entries of {report.feeds} "
            "feeds: each is quarantined with the later entries of its feed; the entries "
            "before it still count and are served"
        )
        return 1
    if lost:
        return 1
    msg = f"ok: {report.entries} entries in {report.feeds} feeds"
    if forks:
        msg += f"; {forks} author(s) quarantined by fork proofs"
    if logged:  # not stored yet, so not checked here (see _say_left_out)
        msg += f"; {logged} more acknowledged, in the entry log only (not checked here)"
    console.print(msg)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every checked entry, feed by feed in seq order, one a line: its payload (canonical JSON,
    which never holds a raw tab or newline), a tab, its signature in hex (CANONICAL.md).
    Standard output is the data a verifier reads: a refusal is said on standard error."""
    if args.author and not _is_hex(args.author):
        errors.print(f"--author {args.author!r}: the start of a key in hex", markup=False)
        return 2
    with closing(_open_to_read(args)) as ledger:
        if args.proofs:
            return _export_proofs(ledger, args.author)
        entries = sorted(ledger.store.iter_ordered(), key=lambda e: (e.author, e.seq))
        if args.author:
            entries = [e for e in entries if e.author_hex.startswith(args.author.lower())]
        heads = Path(args.heads) if args.heads else None
        if heads is not None and not _can_write(heads):
            return 1
        out = sys.stdout.buffer
        for e in entries:
            out.write(e.payload + b"\t" + e.signature.hex().encode() + b"\n")
        out.flush()
        if heads is not None and not _write_heads(heads, entries):
            return 1
        _say_left_out(ledger)
    return 0


def _can_write(path: Path) -> bool:
    """Whether a file can be written beside the --heads path, said before a line is printed
    (not after the whole export, with its heads missing). The probe leaves nothing behind.
    The file is replaced whole (renamed over): a path that is there and no regular file (a
    device, /dev/stdout, a directory) is refused, never replaced (an outside tester, as root,
    replaced /dev/full)."""
    if (path.exists() or path.is_symlink()) and not path.is_file():
        errors.print(f"cannot write --heads {path}: it is no regular file", markup=False)
        return False
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        errors.print(f"cannot write --heads {path}: {exc.strerror or exc}", markup=False)
        return False
    return True


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _write_heads(path: Path, entries: list[Entry]) -> bool:
    """Where each feed printed ends: `author TAB seq TAB hash` (hex) a line, in the export's
    order, from the same read as the lines. The lines alone cannot show a feed cut short at a
    group's head, or left out: a verifier checks them against this (CANONICAL.md section 5).
    Written whole or not at all (core.identity.write_atomic), so a partial one is never read;
    False (said on standard error) if the disk refused it."""
    last: dict[bytes, Entry] = {}
    for e in entries:
        last[e.author] = e
    text = "".join(f"{e.author_hex}\t{e.seq}\t{e.hash.hex()}\n" for e in last.values())
    try:
        write_atomic(path, text.encode("ascii"))
    except OSError as exc:
        errors.print(f"cannot write --heads {path}: {exc}", markup=False)
        return False
    return True


def _export_proofs(ledger: Ledger, author: str | None) -> int:
    """The fork proofs held, one a line (their canonical JSON, CANONICAL.md section 3): what a
    verifier needs beside the entries, whose forked feeds count in no view from the proof's seq
    on. A stored proof that does not check out is named on standard error (exit status 1);
    the others are printed all the same."""
    out = sys.stdout.buffer
    bad = 0
    for key, seq, proof in ledger.store.fork_proof_rows():
        who = key.hex() if isinstance(key, bytes) else repr(key)  # a damaged row: any type
        if author and not who.startswith(author.lower()):
            continue
        if isinstance(proof, str):
            bad += 1
            errors.print(f"refused: the fork proof held for {who} seq {seq}: {proof}", markup=False)
        else:
            out.write(proof.to_bytes() + b"\n")
    out.flush()
    return 1 if bad else 0


def _count(text: str) -> int:
    """A --limit: a whole number, 0 or more (argparse says what is wrong with another)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (0: no limit)")
    return value


def cmd_show(args: argparse.Namespace) -> int:
    with closing(_open_to_read(args)) as ledger:
        view = ledger.view()
        quarantine = ledger.store.quarantine()
        # The last --limit kept as they come (a bounded deque), not every entry of the ledger.
        rows = collections.deque(
            (
                e
                for e in ledger.store.iter_ordered()
                if (not args.author or e.author_hex.startswith(args.author.lower()))
                and (not args.type or e.type == args.type)
            ),
            maxlen=args.limit or None,
        )
        _say_left_out(ledger)
    table = Table(title=f"ledger entries ({len(rows)} shown, fold order)")
    for col in ("lamport", "author", "seq", "type", "what", "effect"):
        table.add_column(col)
    for e in rows:
        eff = view.effect(e)
        effect = "" if eff is None else ("ok" if eff.applied else "NO EFFECT")
        if eff is not None and eff.note:
            effect += f": {eff.note}" if effect else eff.note
        who = _short(e.author) + (" (us)" if e.author == ledger.author else "")
        table.add_row(str(e.lamport), who, str(e.seq), e.type, _summary(e), effect)
    console.print(table)
    for author, seq in quarantine.items():
        console.print(f"[bold]quarantined:[/bold] {author.hex()} from seq {seq} (equivocated)")
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    with closing(_open_to_read(args)) as ledger:
        econ = ledger.view().economy
        _say_left_out(ledger)
    balances = dict(sorted(econ.balances.items(), key=lambda kv: (-kv[1], kv[0])))
    if args.actor:
        balances = {args.actor: econ.balance(args.actor)}
    table = Table(title="balances")
    table.add_column("actor")
    table.add_column("balance", justify="right")
    for actor, amount in balances.items():
        table.add_row(actor, str(amount))
    console.print(table)
    console.print(f"minted {econ.minted}, burned {econ.burned}, supply {econ.supply}")
    _publish(args, "gift/balance", {"balances": balances, "supply": econ.supply}, wrote=False)
    return 0


def _append(args: argparse.Namespace, make: Callable[[Ledger], Entry]) -> tuple[Entry, EntryEffect]:
    """Append the entry `make` writes to the node's ledger; with its effect in the ledger's view."""
    with closing(_open(args)) as ledger:
        _hold_after_a_death(ledger)
        e = make(ledger)
        effect = ledger.view().effect(e)
        assert effect is not None  # (our own entry, just appended: folded at the view's end)
        return e, effect


# The node's run record (node/watchdog/rebirth.py RUN_FILE): `"clean": false` while a
# `gibsey up` runs, and after one that died.
RUN_FILE = "run.json"


def _hold_after_a_death(ledger: Ledger) -> None:
    """Hold the own feed as `gibsey up` does after a run that died (node/parts.py
    attach_ledger), when no node runs here now and the node has a mesh: the last minute's
    entries may be on the peers only, and a ledger restored from a backup of that minute looks
    whole (an outside tester's CLI mint there forked the feed, 20 acknowledged mints lost)."""
    from gibsey.core.datalock import holder

    from .ownfeed import after_a_death

    if ledger.store.own_mark is None:
        return  # a ledger in memory: no node's
    data_dir = Path(ledger.store.path).parent
    if holder(data_dir) is not None:
        return  # a running node: it holds (or signed on) itself
    try:
        run = json.loads((data_dir / RUN_FILE).read_bytes())
    except (OSError, ValueError):
        return
    if isinstance(run, dict) and run.get("clean") is False and _has_mesh(data_dir):
        ledger.store.hold_own_feed(after_a_death())


def _has_mesh(data_dir: Path) -> bool:
    """Whether the node's gibsey.toml runs a mesh (a [mesh] section, not turned off): only
    then can a peer hold entries of its feed that its ledger lacks. An unreadable file: no."""
    from gibsey.core.config import read_config_file

    try:
        mesh = read_config_file(data_dir)[1].get("mesh")
    except (OSError, ValueError):
        return False
    return isinstance(mesh, dict) and mesh.get("enabled", True) is not False


HOLD_HELP = (
    "after restoring a backup: sign nothing on this node's feed until its peers have shown what "
    "they hold of it (run before `gibsey up`; needs a [mesh])"
)


def cmd_hold(args: argparse.Namespace) -> int:
    """Hold the own feed until the peers have shown what they hold of it: after a technician
    restores a backup of the data directory, which cannot tell itself from a clean stop (the
    mark in own-feed.json came back with it), so the node would sign over what its feed signed
    since the backup, which its peers hold: a fork (CANONICAL.md section 3)."""
    from gibsey.core.config import resolve_data_dir
    from gibsey.core.datalock import holder

    from .ownfeed import HOLD_FILENAME, after_a_restore

    data_dir = resolve_data_dir(args.data)
    running = holder(data_dir)
    if running is not None:
        errors.print(
            f"error: a node runs on {data_dir} (pid {running}): stop it, restore the backup, then "
            "hold; a node started on the restored ledger before the hold may have signed over "
            "its peers' copy already (`gibsey mesh status` names a fork)",
            markup=False,
        )
        return 1
    if not _has_mesh(data_dir):
        errors.print(
            f"error: {data_dir}/gibsey.toml has no [mesh] (or it is off): no peer holds this "
            "node's feed, so there is nothing to wait for; a restored backup's ledger is the "
            "whole feed",
            markup=False,
        )
        return 1
    with closing(_open(args)) as ledger:
        ledger.store.hold_own_feed(after_a_restore())
    console.print(
        f"this node's own feed is held ({data_dir / HOLD_FILENAME}): `gibsey up` signs nothing "
        "until every allowed peer has shown what it holds of the feed (what they hold comes "
        "back first), or [mesh] own_feed_confirm_s has passed; start it with its peers up",
        markup=False,
    )
    return 0


def _txn(args: argparse.Namespace, make: Callable[[Ledger], Entry]) -> int:
    e, eff = _append(args, make)
    note = f" ({eff.note})" if eff.note else ""
    console.print(f"{e.type} appended: seq {e.seq}, lamport {e.lamport}, {e.hash_hex[:16]}{note}")
    _publish(args, "gift/txn", txn_payload(e, eff.applied, eff.note))
    return 0


def cmd_gift(args: argparse.Namespace) -> int:
    return _txn(args, lambda lg: lg.gift(args.giver, args.receiver, args.amount, args.memo))


def cmd_mint(args: argparse.Namespace) -> int:
    return _txn(args, lambda lg: lg.mint(args.actor, args.amount, args.ritual))


def cmd_burn(args: argparse.Namespace) -> int:
    return _txn(args, lambda lg: lg.burn(args.actor, args.amount, args.reason))


def cmd_propose(args: argparse.Namespace) -> int:
    if args.file:
        target = hashlib.sha256(Path(args.file).read_bytes()).hexdigest()
    elif args.target:
        target = args.target.lower()
    else:
        console.print("error: give --target HASH or --file PATH (what the proposal applies)")
        return 2
    e, eff = _append(
        args, lambda lg: lg.propose(args.action, target, args.title, args.by, refuse_void=True)
    )
    console.print(f"hearing opened: {e.hash_hex} (lamport {e.lamport}) {eff.note}")
    return 0


def cmd_vote(args: argparse.Namespace) -> int:
    e, eff = _append(args, lambda lg: lg.vote(args.proposal, args.actor, args.choice))
    console.print(f"vote appended: seq {e.seq}, lamport {e.lamport}: {eff.note}")
    return 0


def cmd_hearings(args: argparse.Namespace) -> int:
    with closing(_open_to_read(args)) as ledger:
        gov = ledger.view().governance
        done = executions(ledger.store)
        _say_left_out(ledger)
    table = Table(title="Schrödinger hearings")
    for col in ("proposal", "action", "title", "status", "yes/no of total", "closes after", "here"):
        table.add_column(col)
    for p in sorted(gov.proposals.values(), key=lambda p: p.lamport):
        if not args.all and p.status not in (ProposalStatus.OPEN, ProposalStatus.PASSED):
            continue
        ex = done.get(p.hash)
        here = (
            ex.status if ex else ("awaiting executor" if p.status is ProposalStatus.PASSED else "")
        )
        table.add_row(
            p.hash_hex[:12],
            p.action,
            p.title,
            p.status.value,
            f"{p.yes}/{p.no} of {p.total}",
            f"lamport {p.deadline}",
            here,
        )
    console.print(table)
    return 0


# ---- registration -------------------------------------------------------------------------------


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a refused operation into a one-line message and exit status 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Rejected as exc:
            errors.print(f"refused ({exc.reason.value}): {exc.detail}", markup=False)
        except LedgerError as exc:
            errors.print(f"refused: {exc}", markup=False)
        return 1

    return run


def _amount(text: str) -> int:
    """An amount on the command line: ASCII digits only. Python's int() would also take
    full-width or other scripts' digits, `_` separators, a sign and spaces ("１０", "1_0")."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: an amount is ASCII digits, e.g. 10")
    return int(text)


AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], Any]


def _add_token_commands(add: AddCommand) -> None:
    """`gift`, `mint`, `burn`: the commands that move tokens."""
    p = add("gift", cmd_gift, "gift AMOUNT from one actor to another (must be covered)")
    p.add_argument("giver", metavar="FROM")
    p.add_argument("receiver", metavar="TO")
    p.add_argument("amount", type=_amount, metavar="AMOUNT")
    p.add_argument("--memo", default=None)
    p = add(
        "mint",
        cmd_mint,
        "mint AMOUNT to ACTOR for a ritual performed (within this node's mint budget, as a "
        "ritual's mint: refused over it, ECONOMY.md)",
    )
    p.add_argument("actor", metavar="ACTOR")
    p.add_argument("amount", type=_amount, metavar="AMOUNT")
    p.add_argument("--ritual", default="manual", help="which ritual (default: manual)")
    p = add("burn", cmd_burn, "burn AMOUNT of ACTOR's balance")
    p.add_argument("actor", metavar="ACTOR")
    p.add_argument("amount", type=_amount, metavar="AMOUNT")
    p.add_argument("--reason", default=None)


def _data_option() -> argparse.ArgumentParser:
    """`--data DIR` for the ledger's own parsers, defaulting to SUPPRESS.

    argparse copies every sub-parser default over the parent's namespace, so a plain
    `default=None` here would erase the `--data` given before `ledger` (`gibsey --data D
    ledger show`); with SUPPRESS the option is only set where it is actually typed.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the node's data directory (default: $GIBSEY_DATA, else a per-user folder)",
    )
    return p


def register(
    subparsers: Any, common: argparse.ArgumentParser, publish_hook: PublishHook | None = None
) -> None:
    """Add `gibsey ledger ...`. `common` (the top-level `--data`) is accepted for the shared
    interface; the ledger parsers use a SUPPRESS-default copy so they never reset it."""
    if publish_hook is not None:
        set_publish_hook(publish_hook)
    data = _data_option()
    ledger_p = subparsers.add_parser(
        "ledger",
        parents=[data],
        help="the gift ledger: feeds, balances, hearings",
        description="Signed hash-chained feeds, the gift economy and Schrödinger hearings.",
    )
    sub = ledger_p.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")

    def dispatch(args: argparse.Namespace) -> int:
        fn: Callable[[argparse.Namespace], int] | None = getattr(args, "ledger_func", None)
        if fn is None:
            ledger_p.print_help()
            return 2
        if not hasattr(args, "data"):
            args.data = None
        # gibsey.toml was checked whole before this runs (gibsey/cli.py: WHOLE_CONFIG_CHECKED).
        return fn(args)

    ledger_p.set_defaults(func=dispatch)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> Any:
        p = sub.add_parser(name, parents=[data], help=help_, description=help_)
        p.set_defaults(ledger_func=_guard(fn))
        return p

    add("verify", cmd_verify, "re-check every row, chain and signature; name each bad row")
    p = add("export", cmd_export, "print the checked entries, one a line (see CANONICAL.md)")
    p.add_argument("--author", metavar="HEX", help="only feeds whose key starts with HEX")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--proofs",
        action="store_true",
        help="print the fork proofs held instead, one a line (a forked feed counts in no view "
        "from the proof's seq on)",
    )
    what.add_argument(
        "--heads",
        metavar="FILE",
        help="also write where each feed printed ends to FILE, one line a feed: author, last "
        "seq and that entry's hash, tab-separated (a verifier sees a feed cut short or missing)",
    )
    p = add("show", cmd_show, "print entries in fold order with their effect")
    p.add_argument("--author", metavar="HEX", help="only feeds whose key starts with HEX")
    p.add_argument("--type", choices=sorted(KNOWN_TYPES), help="only entries of this type")
    p.add_argument("--limit", type=_count, default=0, metavar="N", help="only the last N")
    p = add("balance", cmd_balance, "balances of every actor (or one)")
    p.add_argument("actor", nargs="?", help="just this actor")
    _add_token_commands(add)
    add("hold", cmd_hold, HOLD_HELP)
    p = add("propose", cmd_propose, "open a hearing on an action")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--title", required=True)
    p.add_argument("--by", required=True, metavar="ACTOR", help="the proposing actor")
    p.add_argument("--target", metavar="SHA256", help="hash of what the action would apply")
    p.add_argument("--file", metavar="PATH", help="hash this file as the target")
    p = add("vote", cmd_vote, "vote on an open hearing for an actor")
    p.add_argument("proposal", metavar="PROPOSAL", help="proposal hash (a unique prefix is ok)")
    p.add_argument("choice", choices=CHOICES)
    p.add_argument("--as", dest="actor", required=True, metavar="ACTOR")
    p = add("hearings", cmd_hearings, "open and passed hearings (--all: every one)")
    p.add_argument("--all", action="store_true")
