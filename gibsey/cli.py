"""The `gibsey` command line: one subcommand per part of the node.

Each part owns its subcommands in its own module (`<part>/cli.py`) and exposes
`register(subparsers, common)` (a part with a second command names its function:
`module:function`); this file only lists which parts exist, so adding a part never
means editing another part's code. `common` is a parent parser carrying the options every command
takes (`--data DIR`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sqlite3
import sys
from collections.abc import Sequence

from gibsey import __version__

# Subcommand -> the module that provides it, in the order `gibsey --help` lists them. Running
# one command imports only its module: `gibsey watchdog record-exit` runs in systemd's restart
# path, and importing every part (the model runtime, the web framework) would cost it ~0.4 s.
COMMANDS: dict[str, str] = {
    "up": "gibsey.node.cli",
    "schema": "gibsey.node.spine.cli",
    "vm": "gibsey.node.glyph.cli",
    "dial": "gibsey.node.dial.cli",
    "firmware": "gibsey.node.dial.cli:register_firmware",
    "watchdog": "gibsey.node.watchdog.cli",
    "image": "gibsey.node.cli:register_image",
    "doctor": "gibsey.node.cli:register_doctor",
    "gateway": "gibsey.node.gateway.cli",
    "ledger": "gibsey.ledger.cli",
    "story": "gibsey.node.story.cli",
    "mesh": "gibsey.mesh.cli",
    "agent": "gibsey.node.agents.cli",
    "bench": "gibsey.bench.cli",
    "rehearse": "gibsey.harness.rehearse.cli",
    "monitor": "gibsey.node.monitor.cli",
}


DATA_HELP = "the node's data directory (default: $GIBSEY_DATA, else a per-user folder)"


def common_parser() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand that is not given --data must not overwrite the value given before
    # the subcommand (`gibsey --data D ledger show`); the top-level parser supplies the default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=DATA_HELP)
    return common


def _requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (the first word that is one), if any."""
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word == "--data":
            skip = True
        elif word in COMMANDS:
            return word
        elif not word.startswith("-"):
            return None
    return None


# `gibsey --help` into a pipe or file: wrapped here, not at argparse's 80 columns, so each
# command stays one line, as the README says (the longest is ~95 characters).
PIPE_HELP_WIDTH = 120


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's, wrapped to the terminal on one, at PIPE_HELP_WIDTH into a pipe."""
    return argparse.HelpFormatter(prog, width=None if sys.stdout.isatty() else PIPE_HELP_WIDTH)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="gibsey",
        description="Gibsey node: run a node and work with each of its parts.",
        formatter_class=_help_formatter,
    )
    parser.add_argument("--data", metavar="DIR", default=None, help=DATA_HELP)
    parser.add_argument("--version", action="version", version=f"gibsey {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for target in (COMMANDS[only],) if only else COMMANDS.values():
        module_name, _, function = target.partition(":")
        register = getattr(importlib.import_module(module_name), function or "register")
        register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`gibsey ...`: Ctrl-C at any point ends it with 130 and no traceback (an outside tester
    hit one while the commands' modules loaded), and a reader that stops reading (`| head -1`)
    ends it as a pipe does any writer, quietly (141: 128 + SIGPIPE)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # What is still buffered for the closed pipe must not raise again as Python exits.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested_command(words))
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    refused = _data_not_a_directory(args) or _config_refused(args) or _no_node_to_read(args)
    if refused:
        print(f"gibsey {args.command}: {refused}", file=sys.stderr)
        return 2
    held = _what_data_holds(args)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (OSError, sqlite3.Error) as exc:
        return _disk_refused(args, exc)
    except RuntimeError as exc:
        from gibsey.core.identity import IdentityError

        if not isinstance(exc, IdentityError):
            raise
        # A node.key or node_id a person must mend (torn, emptied): one line, as `gibsey up`
        # says it, not a traceback from whichever command met it first.
        print(f"gibsey {args.command}: {exc}", file=sys.stderr)
        return 2
    _say_if_node_made(args, held)
    return int(rc or 0)


# Commands whose point is to make a node where none is (`up` says so in its own log), or that
# never touch --data's directory.
MAKE_THEIR_NODE = frozenset({"up", "bench", "rehearse", "image", "firmware", "schema"})


def _what_data_holds(args: argparse.Namespace) -> frozenset[str] | None:
    """The names in --data's directory now (none when it is missing); None for
    MAKE_THEIR_NODE."""
    if args.command in MAKE_THEIR_NODE:
        return None
    from gibsey.core.config import resolve_data_dir

    data_dir = resolve_data_dir(getattr(args, "data", None))
    try:
        return frozenset(p.name for p in data_dir.iterdir())
    except OSError:
        return frozenset()


def _say_if_node_made(args: argparse.Namespace, held: frozenset[str] | None) -> None:
    """A write into a directory that held no node makes one there (or writes a part's files
    there: an opcode table, a gateway token): said, because a mistyped --data would otherwise
    mint, import a story or bind a program into a directory no node runs from, silently."""
    from gibsey.core.identity import KEY_FILENAME

    now = _what_data_holds(args)
    if held is None or now is None or KEY_FILENAME in held or not now - held:
        return
    from gibsey.core.config import resolve_data_dir

    data_dir = resolve_data_dir(getattr(args, "data", None))
    what = (
        f"made a new node in {data_dir} (it held none)"
        if KEY_FILENAME in now
        else f"wrote {', '.join(sorted(now - held))} in {data_dir} (it held no node)"
    )
    print(
        f"gibsey {args.command}: {what}; if you meant a node that exists, check --data or "
        "GIBSEY_DATA",
        file=sys.stderr,
    )


def _not_the_disk(args: argparse.Namespace, exc: OSError | sqlite3.Error) -> int | None:
    """One line (and the exit status) for an error a command did not say itself that is no
    refused write: a database SQLite cannot read, one another process holds past the busy
    timeout, a file argument that cannot be read or written. None: a refused write, or a bug."""
    from gibsey.core.config import resolve_data_dir
    from gibsey.core.storage import EXIT_DISK_REFUSED, StorageError, unreadable

    damaged = unreadable(exc, f"a database in {resolve_data_dir(getattr(args, 'data', None))}")
    if damaged is not None:
        print(f"gibsey {args.command}: {damaged}", file=sys.stderr)
        return 1
    if isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
    ):
        print(
            f"gibsey {args.command}: a database of the node is busy ({exc}): another process "
            "(the running node) held its write lock past the wait; nothing was written by this "
            "command: try again (if it lasts, the node's own commits may be failing: `gibsey "
            "doctor`)",
            file=sys.stderr,
        )
        return EXIT_DISK_REFUSED  # EX_TEMPFAIL: the same command may pass in a moment
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.filename:
        # A path given on the command line (an output in a missing folder, a directory where a
        # file was meant): said as the OS said it, with the path, not as a traceback.
        print(f"gibsey {args.command}: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return None


def _data_not_a_directory(args: argparse.Namespace) -> str | None:
    """Why the data directory cannot be one (a file is in its place, or in the place of one of
    its parents), or None. Said before any command tries to make or read it, in one line."""
    from gibsey.core.config import resolve_data_dir

    named = getattr(args, "data", None)
    if named == "":  # not the default: an empty --data is a mistake, never "wherever"
        return "--data is empty: name the node's directory (or leave --data out)"
    if named is None and os.environ.get("GIBSEY_DATA") == "":
        return "GIBSEY_DATA is set but empty: name the node's directory, or unset it"
    data_dir = resolve_data_dir(named)
    for path in (data_dir, *data_dir.parents):
        if path.exists():
            if path.is_dir():
                return None
            return (
                f"the data directory {data_dir} cannot be made: {path} is a file; "
                "--data or GIBSEY_DATA names a directory (a new node makes it)"
            )
    return None


# Commands that only read a node's data: on a directory that holds no node (a mistyped --data, a
# GIBSEY_DATA unset) they say so, instead of making a node there (a key, an empty ledger) and
# answering "ok: 0 entries" about it. (command, its subcommand); `story branch` reads when it
# names no branch to create.
READS_A_NODE = frozenset(
    {
        ("ledger", "verify"),
        ("ledger", "export"),
        ("ledger", "show"),
        ("ledger", "balance"),
        ("ledger", "hearings"),
        ("mesh", "status"),
        ("story", "log"),
        ("story", "show"),
        ("story", "diff"),
        ("story", "branch"),
        ("vm", "table"),
        ("watchdog", "deaths"),  # said "no deaths recorded", exit 0, of a mistyped --data
    }
)


def _no_node_to_read(args: argparse.Namespace) -> str | None:
    from gibsey.core.config import resolve_data_dir
    from gibsey.core.identity import KEY_FILENAME
    from gibsey.ledger.store import DB_FILENAME

    sub = getattr(args, f"{args.command}_command", None)
    if (args.command, sub) not in READS_A_NODE:
        return None
    if sub == "branch" and getattr(args, "name", None):
        return None  # `story branch NAME` creates a branch: a write, which makes the node
    data_dir = resolve_data_dir(getattr(args, "data", None))
    # A node's key, or a ledger alone (copied elsewhere to be checked: read without a key).
    if (data_dir / KEY_FILENAME).exists() or (data_dir / DB_FILENAME).exists():
        return None
    return (
        f"no node in {data_dir} (no {KEY_FILENAME}, no {DB_FILENAME}): nothing to read; --data "
        "or GIBSEY_DATA names a node's data directory (`gibsey up` makes a node in it)"
    )


# Commands that read gibsey.toml beside a node but only the sections they need (`ledger` its
# [node], `mesh` its [mesh]): the whole file is checked first, as `gibsey up` checks it, so a
# typo in a section's name or a bad value anywhere is said, not silently ignored, and before
# anything is written (a command refused after its write would invite a second one).
WHOLE_CONFIG_CHECKED = frozenset({"ledger", "mesh"})


def _config_refused(args: argparse.Namespace) -> str | None:
    if args.command not in WHOLE_CONFIG_CHECKED:
        return None
    from gibsey.core.config import ConfigError, resolve_data_dir
    from gibsey.node.config import load_gibsey_config

    try:
        load_gibsey_config(resolve_data_dir(getattr(args, "data", None)))
    except ConfigError as exc:
        return str(exc)
    return None


def _disk_refused(args: argparse.Namespace, exc: OSError | sqlite3.Error) -> int:
    """A command the disk refused a write (full, read-only, failing; nothing was stored, every
    write is atomic): one line on stderr and EXIT_DISK_REFUSED, no traceback. Any other error
    is raised on."""
    from gibsey.core.config import resolve_data_dir
    from gibsey.core.storage import EXIT_DISK_REFUSED, StorageError, refused_advice, sqlite_refusal

    said = _not_the_disk(args, exc)
    if said is not None:
        return said
    data_dir = resolve_data_dir(getattr(args, "data", None))
    # A plain OSError is one only when it is a StorageError (a write of ours that was refused):
    # the commands also write elsewhere (an SD image, a firmware drive), and say so themselves.
    if isinstance(exc, OSError) and not isinstance(exc, StorageError):
        raise exc
    refused = sqlite_refusal(exc, f"a database in {data_dir}", data_dir)
    if refused is None:
        raise exc
    advice = refused_advice(data_dir, refused, again="try again")
    if refused.errno == errno.EROFS:
        # SQLite writes to open a database, even to read it: a copy on a writable disk reads.
        advice += (
            f"; to read it meanwhile, copy it to a writable disk (`cp -a {data_dir} "
            f"/tmp/gibsey-copy`) and run the command with --data /tmp/gibsey-copy"
        )
    print(f"gibsey {args.command}: {advice}", file=sys.stderr)
    return EXIT_DISK_REFUSED


if __name__ == "__main__":
    sys.exit(main())
