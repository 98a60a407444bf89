"""What the README claims, checked where a test can check it (issue 17, item 7): the event kinds
it lists are the kinds the envelope defines, grouped as the router treats them; every `gibsey`
command it shows exists, with the options it shows. (Its table of environment overrides is
checked in tests/test_config.py.)"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from gibsey.cli import build_parser
from gibsey.core.envelope import PAYLOADS
from gibsey.node.spine.router import NODE_OWNED_KINDS

REPO = Path(__file__).resolve().parent.parent
READMES = [REPO / "README.md", REPO / "images" / "README.md"]


def _kind_rows() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text()
    rows: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and "/" in cells[1] and cells[1].startswith("`"):
            kinds = set(re.findall(r"`([a-z]+/[a-z_]+)`", cells[1]))
            if kinds and kinds <= set(PAYLOADS):
                rows[cells[0]] = kinds
    return rows


def test_the_kinds_table_is_the_envelope() -> None:
    rows = _kind_rows()
    listed = [k for kinds in rows.values() for k in kinds]
    assert sorted(listed) == sorted(PAYLOADS), "every kind listed once, no other"
    node_only = next(kinds for who, kinds in rows.items() if who.startswith("the node only"))
    assert node_only == NODE_OWNED_KINDS


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _shown_commands() -> list[tuple[str, list[str]]]:
    shown: list[tuple[str, list[str]]] = []
    for path in READMES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(
                r"(?<![\w/-])gibsey ((?:[a-z][\w-]*|--?[\w-]+)(?: [^`#|>]*)?)", line
            ):
                words = m.group(1).split()
                shown.append((f"{path.name}:{n}", words))
    return shown


def test_every_command_shown_exists_with_its_options() -> None:
    """Each `gibsey ...` in the READMEs: the command and subcommand exist, and each option shown
    is one that (sub)command takes."""
    root = build_parser()
    shown = _shown_commands()
    assert len(shown) > 30
    for where, words in shown:
        parser, path = root, ["gibsey"]
        for word in words:
            if word.startswith("-"):
                option = word.split("=", 1)[0]
                assert option in _options(parser) | _options(root), f"{where}: {path} {option}"
                continue
            subs = _subparsers(parser)
            if subs and word in subs:
                parser = subs[word]
                path.append(word)
            elif subs and len(path) <= 2 and word.isidentifier() and word.islower():
                # A lower-case word where a subcommand goes must be one (SUITE, DIR: arguments).
                assert word in subs or not _subparsers(parser), (
                    f"{where}: no `{' '.join(path)} {word}`"
                )
        assert len(path) >= 2, f"{where}: `gibsey {' '.join(words)}` names no command"
