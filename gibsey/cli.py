"""The `gibsey` command line: one subcommand per part of the node.

Each part owns its subcommands in its own module (`<part>/cli.py`) and exposes
`register(subparsers, common)`; this file only lists which parts exist, so adding a part never
means editing another part's code. `common` is a parent parser carrying the options every command
takes (`--data DIR`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gibsey import __version__

# Modules that provide subcommands, in the order `gibsey --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "gibsey.node.cli_up",
    "gibsey.node.cli_schema",
    "gibsey.node.cli_vm",
    "gibsey.node.cli_dial",
    "gibsey.node.cli_firmware",
    "gibsey.node.cli_watchdog",
    "gibsey.node.cli_image",
    "gibsey.node.cli_doctor",
    "gibsey.ledger.cli",
    "gibsey.node.story.cli",
    "gibsey.mesh.cli",
    "gibsey.node.agents.cli",
    "gibsey.bench.cli",
)


DATA_HELP = "the node's data directory (default: $GIBSEY_DATA, else a per-user folder)"


def common_parser() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand that is not given --data must not overwrite the value given before
    # the subcommand (`gibsey --data D ledger show`); the top-level parser supplies the default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=DATA_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="gibsey",
        description="Gibsey node: run a node and work with each of its parts.",
    )
    parser.add_argument("--data", metavar="DIR", default=None, help=DATA_HELP)
    parser.add_argument("--version", action="version", version=f"gibsey {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (
                name == exc.name or name.startswith(exc.name + ".")
            ):  # part not built yet on this checkout
                continue
            raise
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
